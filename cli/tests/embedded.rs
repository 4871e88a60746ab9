//! End to end through `locality up`: residency, refusals, outputs, bad input, and
//! the scenarios shared with the distributed mode (`common::scenarios`).

mod common;

use std::io::Cursor;

use common::embedded::Embedded;
use common::s3::StoppableS3;
use common::{files_under, fixture, scenarios, REGIONS};
use image::GenericImageView;
use serde_json::{json, Value};

const PHOTOS: [(&str, &str); 3] = [
    ("demo-eu", "photos/exifsamples_87_OSError.jpg"),
    ("demo-ca", "photos/recurser_Landscape_6.jpg"),
    ("demo-sg", "photos/pillow_xmp_test.jpg"),
];

fn all_formats() -> Value {
    json!([
        {"name": "large", "width": 640, "height": 640, "format": "jpeg", "quality": 82},
        {"name": "square", "width": 200, "height": 200, "fit": "cover", "format": "webp"},
        {"name": "stretched", "width": 120, "height": 90, "fit": "fill", "format": "png"},
        {"name": "small", "width": 160, "height": 160, "format": "avif", "quality": 50}
    ])
}

fn read_output(embedded: &Embedded, output: &Value) -> Vec<u8> {
    let region = output["region"].as_str().unwrap();
    let path = embedded
        .region_dir(region)
        .join(output["key"].as_str().unwrap());
    std::fs::read(&path).unwrap_or_else(|e| panic!("output {} missing: {e}", path.display()))
}

/// Decodes with the image crate (AVIF through its header only: this build has no AV1 decoder).
fn decoded_size(bytes: &[u8], format: &str) -> (u32, u32) {
    if format == "avif" {
        assert_eq!(&bytes[4..12], b"ftypavif", "not an AVIF file");
        return avif_dimensions(bytes);
    }
    let guessed = image::guess_format(bytes).expect("output is an image");
    let expected = match format {
        "jpeg" => image::ImageFormat::Jpeg,
        "png" => image::ImageFormat::Png,
        "webp" => image::ImageFormat::WebP,
        other => panic!("unexpected format {other}"),
    };
    assert_eq!(guessed, expected);
    image::load_from_memory(bytes)
        .expect("output decodes")
        .dimensions()
}

/// Width and height from the `ispe` property of an AVIF file.
fn avif_dimensions(bytes: &[u8]) -> (u32, u32) {
    let at = bytes
        .windows(4)
        .position(|w| w == b"ispe")
        .expect("ispe box");
    let field =
        |offset: usize| u32::from_be_bytes(bytes[at + offset..at + offset + 4].try_into().unwrap());
    (field(8), field(12))
}

/// No EXIF, GPS, XMP, IPTC or ICC in the encoded bytes.
fn assert_no_metadata(bytes: &[u8], what: &str) {
    assert!(
        exif::Reader::new()
            .read_from_container(&mut Cursor::new(bytes))
            .is_err(),
        "{what}: EXIF survived"
    );
    for needle in [
        &b"Exif\0\0"[..],
        b"GPS",
        b"http://ns.adobe.com/xap",
        b"Photoshop 3.0",
        b"ICC_PROFILE",
        b"iCCP",
        b"ICCP",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{what}: found {:?} in the output",
            String::from_utf8_lossy(needle)
        );
    }
}

#[tokio::test]
async fn each_tenant_output_lands_only_in_its_region_with_the_requested_sizes() {
    let embedded = Embedded::start();
    for (tenant, photo) in PHOTOS {
        let record = embedded
            .run_job(tenant, photo, "in/photo.jpg", all_formats())
            .await;
        assert_eq!(record["status"], "succeeded", "{record}");
        let home = tenant.trim_start_matches("demo-");
        assert_eq!(record["region"], home);
        let outputs = record["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 4);
        for output in outputs {
            assert_eq!(output["region"], home);
            let bytes = read_output(&embedded, output);
            assert_eq!(bytes.len() as u64, output["bytes"].as_u64().unwrap());
            let size = decoded_size(&bytes, output["format"].as_str().unwrap());
            assert_eq!(
                size,
                (
                    output["width"].as_u64().unwrap() as u32,
                    output["height"].as_u64().unwrap() as u32
                ),
                "{output}"
            );
            assert_no_metadata(&bytes, &format!("{tenant} {}", output["name"]));
        }
        let by_name = |name: &str| outputs.iter().find(|o| o["name"] == name).unwrap();
        assert_eq!(
            (
                by_name("square")["width"].as_u64(),
                by_name("square")["height"].as_u64()
            ),
            (Some(200), Some(200))
        );
        assert_eq!(
            (
                by_name("stretched")["width"].as_u64(),
                by_name("stretched")["height"].as_u64()
            ),
            (Some(120), Some(90))
        );
        let large = by_name("large");
        assert_eq!(
            large["width"]
                .as_u64()
                .unwrap()
                .max(large["height"].as_u64().unwrap()),
            640
        );
    }
    // Every file in a region's directory belongs to the tenant pinned there, and nothing
    // else; so does every record of the region's record of processing.
    for region in REGIONS {
        let files = files_under(&embedded.region_dir(region));
        assert!(!files.is_empty(), "region {region} has no files");
        for file in files {
            assert!(
                file.starts_with(&format!("demo-{region}/"))
                    || file.starts_with(&format!(".audit/v1/demo-{region}/")),
                "{file} found in region {region}"
            );
        }
    }
}

#[tokio::test]
async fn rotated_photos_come_out_upright() {
    let embedded = Embedded::start();
    for (photo, shown) in [
        ("photos/recurser_Landscape_6.jpg", (1800, 1200)),
        ("photos/recurser_Portrait_8.jpg", (1200, 1800)),
    ] {
        let outputs = json!([{"name": "view", "width": 600, "height": 600, "format": "png"}]);
        let record = embedded
            .run_job("demo-eu", photo, "rotated.jpg", outputs)
            .await;
        assert_eq!(record["status"], "succeeded", "{record}");
        let output = image::load_from_memory(&read_output(&embedded, &record["outputs"][0]))
            .unwrap()
            .to_rgb8();
        let expected = if shown.0 > shown.1 {
            (600, 400)
        } else {
            (400, 600)
        };
        assert_eq!(output.dimensions(), expected, "{photo}");

        // Reference: the image crate's own decode and orientation, resized the same.
        let mut decoder = image::ImageReader::open(fixture(photo))
            .unwrap()
            .into_decoder()
            .unwrap();
        let orientation = image::ImageDecoder::orientation(&mut decoder).unwrap();
        let mut reference = image::DynamicImage::from_decoder(decoder).unwrap();
        reference.apply_orientation(orientation);
        let reference = reference
            .resize_exact(
                expected.0,
                expected.1,
                image::imageops::FilterType::Triangle,
            )
            .to_rgb8();
        let upside_down = image::imageops::rotate180(&reference);
        let distance = |a: &image::RgbImage, b: &image::RgbImage| {
            a.as_raw()
                .iter()
                .zip(b.as_raw())
                .map(|(x, y)| (*x as f64 - *y as f64).abs())
                .sum::<f64>()
                / a.as_raw().len() as f64
        };
        let upright = distance(&output, &reference);
        let flipped = distance(&output, &upside_down);
        assert!(
            upright < 6.0,
            "{photo}: mean difference to the upright reference is {upright}"
        );
        assert!(
            flipped > upright * 3.0,
            "{photo}: upright {upright} vs rotated {flipped}"
        );
    }
}

#[tokio::test]
async fn cross_region_and_escaping_requests_are_refused_and_write_nothing() {
    let embedded = Embedded::start();
    let before: Vec<Vec<String>> = REGIONS
        .iter()
        .map(|r| files_under(&embedded.region_dir(r)))
        .collect();
    let outputs = json!([{"name": "t", "width": 100, "height": 100, "format": "jpeg"}]);

    let response = embedded
        .submit("demo-eu", &json!({"v": 1, "tenant": "demo-eu", "source": {"key": "a.jpg", "region": "sg"}, "outputs": outputs}))
        .await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(body["error"]["code"], "region_not_allowed");
    assert!(
        message.contains("demo-eu")
            && message.contains("sg")
            && message.contains("allowed regions: eu"),
        "{message}"
    );

    let response = embedded
        .submit("demo-eu", &json!({"v": 1, "tenant": "demo-eu", "source": {"key": "../demo-ca/x.jpg"}, "outputs": outputs}))
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("source.key:"),
        "{body}"
    );

    let photo = std::fs::read(fixture("photos/recurser_Portrait_8.jpg")).unwrap();
    let response = embedded
        .upload("demo-eu", "x.jpg", "?region=sg", photo.clone())
        .await;
    assert_eq!(response.status(), 403);
    let response = embedded
        .upload("demo-eu", "..%2Fdemo-ca%2Fx.jpg", "", photo.clone())
        .await;
    assert!(response.status().is_client_error(), "{}", response.status());

    // Another tenant's name in the envelope, a bad key, no key.
    let response = embedded
        .submit(
            "demo-eu",
            &json!({"v": 1, "tenant": "demo-ca", "source": {"key": "a.jpg"}, "outputs": outputs}),
        )
        .await;
    assert_eq!(response.status(), 403);
    let response = embedded
        .http
        .post(format!("{}/v1/jobs", embedded.base_url))
        .bearer_auth("not-a-key")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = embedded
        .http
        .post(format!("{}/v1/jobs", embedded.base_url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Malformed and unsupported envelopes.
    let response = embedded
        .http
        .post(format!("{}/v1/jobs", embedded.base_url))
        .bearer_auth("demo-eu-key")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let response = embedded
        .submit(
            "demo-eu",
            &json!({"v": 2, "tenant": "demo-eu", "source": {"key": "a.jpg"}}),
        )
        .await;
    assert_eq!(response.status(), 400);

    let after: Vec<Vec<String>> = REGIONS
        .iter()
        .map(|r| files_under(&embedded.region_dir(r)))
        .collect();
    assert_eq!(before, after, "a refused request wrote something");
}

#[tokio::test]
async fn a_tenant_cannot_see_another_tenants_job() {
    let embedded = Embedded::start();
    let outputs = json!([{"name": "t", "width": 64, "height": 64, "format": "jpeg"}]);
    let record = embedded
        .run_job(
            "demo-eu",
            "photos/recurser_Portrait_8.jpg",
            "p.jpg",
            outputs,
        )
        .await;
    let job_id = record["job_id"].as_str().unwrap();
    assert_eq!(embedded.status("demo-ca", job_id).await.status(), 404);
    assert_eq!(embedded.status("demo-eu", job_id).await.status(), 200);
}

#[tokio::test]
async fn corrupt_sources_fail_with_a_reason_and_the_next_job_succeeds() {
    let embedded = Embedded::start();
    let outputs = json!([{"name": "t", "width": 100, "height": 100, "format": "webp"}]);
    for (bad, code) in [
        ("bad/text-not-an-image.jpg", "unsupported_format"),
        ("bad/sharp-truncated.jpg", "corrupt_image"),
        ("bad/sharp-giant-image-20000x14000.jpg", "image_too_large"),
        ("bad/pngsuite-xhdn0g08.png", "corrupt_image"),
    ] {
        let record = embedded
            .run_job("demo-ca", bad, "bad.img", outputs.clone())
            .await;
        assert_eq!(record["status"], "failed", "{bad}: {record}");
        assert_eq!(record["error"]["code"], code, "{bad}: {record}");
        assert!(!record["error"]["message"].as_str().unwrap().is_empty());
        let good = embedded
            .run_job(
                "demo-ca",
                "photos/recurser_Portrait_8.jpg",
                "good.jpg",
                outputs.clone(),
            )
            .await;
        assert_eq!(good["status"], "succeeded", "after {bad}: {good}");
    }
    // A job whose source was never uploaded fails too.
    let response = embedded
        .submit("demo-ca", &json!({"v": 1, "tenant": "demo-ca", "source": {"key": "missing.jpg"}, "outputs": outputs}))
        .await;
    let accepted: Value = response.json().await.unwrap();
    let record = embedded
        .wait_for("demo-ca", accepted["job_id"].as_str().unwrap())
        .await;
    assert_eq!(record["error"]["code"], "source_not_found", "{record}");
}

#[tokio::test]
async fn resubmitting_with_an_idempotency_key_returns_the_first_job() {
    let embedded = Embedded::start();
    let photo = std::fs::read(fixture("photos/recurser_Portrait_8.jpg")).unwrap();
    assert_eq!(
        embedded
            .upload("demo-sg", "p.jpg", "?subject=u1", photo)
            .await
            .status(),
        201
    );
    let envelope = json!({"v": 1, "tenant": "demo-sg", "source": {"key": "p.jpg"}, "subject": "u1",
        "idempotency_key": "upload-123", "outputs": [{"name": "t", "width": 64, "height": 64, "format": "jpeg"}]});
    let first: Value = embedded
        .submit("demo-sg", &envelope)
        .await
        .json()
        .await
        .unwrap();
    let second: Value = embedded
        .submit("demo-sg", &envelope)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["job_id"], second["job_id"]);
    let record = embedded
        .wait_for("demo-sg", first["job_id"].as_str().unwrap())
        .await;
    assert!(record["outputs"][0]["key"]
        .as_str()
        .unwrap()
        .starts_with("demo-sg/subjects/u1/assets/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_scenario_holds_on_the_embedded_default() {
    let embedded = Embedded::start();
    scenarios::residency(&embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_mid_run_loses_and_duplicates_no_job_on_the_embedded_default() {
    let mut store = StoppableS3::start("images-eu");
    let mut config = common::config::example();
    store.apply(&mut config, "eu");
    let embedded = Embedded::start_with(config);
    scenarios::store_outage(&embedded, &mut store).await;
}

/// The in-process queue has the broker's semantics: a job failing transiently (its
/// region's store is unreachable) is retried up to `limits.delivery_limit` attempts,
/// then dead-lettered with a failed result, visible in its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_then_dead_lettered_on_the_embedded_default() {
    let mut config = common::config::example();
    let dead_port = common::process::free_port();
    let options = common::config::s3_options(&format!("http://127.0.0.1:{dead_port}"), "k");
    common::config::set_store(&mut config, "eu", "s3://nowhere".into(), options);
    config.limits.delivery_limit = 3;
    config.limits.store_attempts = 1;
    let embedded = Embedded::start_with(config);
    let outputs = json!([{"name": "t", "width": 64, "height": 64, "format": "jpeg"}]);
    let response = embedded
        .submit(
            "demo-eu",
            &json!({"v": 1, "tenant": "demo-eu", "source": {"key": "a.jpg"}, "outputs": outputs}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let job_id = accepted["job_id"].as_str().unwrap();
    let record = embedded.wait_for("demo-eu", job_id).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error"]["code"], "store_unavailable", "{record}");
    assert_eq!(record["dead_lettered"], true, "{record}");
    assert!(
        record["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 deliveries"),
        "{record}"
    );
    let log = embedded.process.log_text();
    for attempt in 1..=3 {
        assert!(
            log.contains(&format!("job_id={job_id}"))
                && log.contains(&format!("attempt={attempt}")),
            "attempt {attempt} is not in the log"
        );
    }
    // eu's configured store failed; nothing fell back to local disk.
    assert!(files_under(&embedded.region_dir("eu")).is_empty());
    // Another region is not affected.
    let good = embedded
        .run_job(
            "demo-ca",
            "photos/recurser_Portrait_8.jpg",
            "ok.jpg",
            json!([{"name": "t", "width": 64, "height": 64, "format": "jpeg"}]),
        )
        .await;
    assert_eq!(good["status"], "succeeded", "{good}");
}

/// The longest source key a client may upload (512 bytes, segments of at most 200) is
/// stored under the layout's prefixes on the local directory store, and its job runs:
/// found by the `keys` fuzz target, where such a job was refused as
/// `key_outside_tenant`. One byte more, and a segment a file system cannot hold, are
/// refused at the upload with `invalid_field`, not a store error.
#[tokio::test]
async fn a_source_key_of_the_longest_allowed_length_uploads_and_its_job_succeeds() {
    let embedded = Embedded::start();
    let segment = "d".repeat(200);
    let longest = format!("{segment}/{segment}/{}.jpg", "k".repeat(512 - 402 - 4));
    assert_eq!(longest.len(), 512);
    let record = embedded
        .run_job(
            "demo-eu",
            "photos/recurser_Portrait_8.jpg",
            &longest,
            common::thumb(),
        )
        .await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let photo = std::fs::read(fixture("photos/recurser_Portrait_8.jpg")).unwrap();
    for refused_key in [format!("x{longest}"), format!("{}.jpg", "k".repeat(256))] {
        let refused = embedded
            .upload("demo-eu", &refused_key, "", photo.clone())
            .await;
        let status = refused.status();
        let body: Value = refused.json().await.unwrap();
        assert_eq!(status, 422, "{refused_key}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{body}");
    }
}

#[tokio::test]
async fn locality_submit_runs_the_quick_starts_job_in_one_command_and_jobs_list_and_get_show_it() {
    let embedded = Embedded::start();
    let photo = fixture("photos/recurser_Landscape_6.jpg");
    let mut args = vec![
        "--key",
        "holiday/beach.jpg",
        "--subject",
        "user-42",
        "--wait",
    ];
    args.extend(common::QUICK_START_OUTPUTS);
    let submitted = common::locality_submit(&embedded.base_url, "demo-eu", &photo, &args);
    let stderr = String::from_utf8_lossy(&submitted.stderr);
    assert_eq!(submitted.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("succeeded after"),
        "no progress line: {stderr}"
    );
    let job: Value = serde_json::from_slice(&submitted.stdout).unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["subject"], "user-42", "{job}");
    let outputs = job["outputs"].as_array().unwrap();
    let sizes: Vec<(String, (u32, u32))> = outputs
        .iter()
        .map(|output| {
            assert_eq!(output["region"], "eu", "{output}");
            let format = output["format"].as_str().unwrap();
            (
                format.to_string(),
                decoded_size(&read_output(&embedded, output), format),
            )
        })
        .collect();
    assert_eq!(sizes.len(), 3, "{job}");
    assert!(
        sizes.contains(&("webp".to_string(), (400, 300))),
        "{sizes:?}"
    );
    assert!(
        sizes.iter().any(|(format, _)| format == "avif"),
        "{sizes:?}"
    );
    let original = embedded
        .region_dir("eu")
        .join("demo-eu/subjects/user-42/assets");
    let stored: Vec<String> = files_under(&original)
        .into_iter()
        .filter(|path| path.ends_with("original/holiday/beach.jpg"))
        .collect();
    assert_eq!(stored.len(), 1, "{:?}", files_under(&original));
    assert_eq!(
        std::fs::read(original.join(&stored[0])).unwrap(),
        std::fs::read(&photo).unwrap(),
        "the original is the file, byte for byte"
    );

    let jobs = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
            .arg("jobs")
            .args(args)
            .args(["--url", &embedded.base_url])
            .env("LOCALITY_API_KEY", common::api_key("demo-eu"))
            .output()
            .unwrap()
    };
    let job_id = job["job_id"].as_str().unwrap();
    let listed = jobs(&["list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["job_id"], job_id);
    let got = jobs(&["get", job_id]);
    assert!(got.status.success(), "{got:?}");
    let got: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got["outputs"], job["outputs"]);

    // The job ran and failed: exit 1, its error printed. A request refused before any
    // job (another tenant's real key): exit 2.
    let corrupt = common::locality_submit(
        &embedded.base_url,
        "demo-eu",
        &fixture("bad/sharp-truncated.jpg"),
        &["--output", "name=t,width=64,height=64,format=png", "--wait"],
    );
    assert_eq!(corrupt.status.code(), Some(1), "{corrupt:?}");
    let failed: Value = serde_json::from_slice(&corrupt.stdout).unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "corrupt_image", "{failed}");
    let foreign = std::process::Command::new(env!("CARGO_BIN_EXE_locality"))
        .arg("submit")
        .arg(&photo)
        .args([
            "--url",
            &embedded.base_url,
            "--tenant",
            "demo-eu",
            "--preset",
            "x",
        ])
        .env("LOCALITY_API_KEY", common::api_key("demo-ca"))
        .output()
        .unwrap();
    assert_eq!(foreign.status.code(), Some(2), "{foreign:?}");
    let listed_after = jobs(&["list", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&listed_after.stdout)
            .lines()
            .count(),
        2,
        "demo-eu has its two jobs, no third: {listed_after:?}"
    );
}

/// Found by schemathesis: serde's derive took `[]` for the export options (and would
/// take an envelope as the array of its fields). Both endpoints refuse a body that is
/// not an object with `invalid_field`, and still take what the description allows.
#[tokio::test]
async fn job_and_export_bodies_that_are_arrays_are_refused_with_invalid_field() {
    let embedded = Embedded::start();
    let post = |path: String, body: &'static str| {
        embedded
            .http
            .post(format!("{}{path}", embedded.base_url))
            .bearer_auth(common::api_key("demo-eu"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (path, body) in [
        ("/v1/subjects/someone/exports", "[]"),
        ("/v1/subjects/someone/exports", "[true]"),
        (
            "/v1/jobs",
            r#"[1,"demo-eu",{"key":"a.jpg"},null,null,[["t",8,8,"cover","jpeg"]]]"#,
        ),
        (
            "/v1/jobs",
            r#"{"v":1,"tenant":"demo-eu","source":["a.jpg"],"preset":"thumbs"}"#,
        ),
    ] {
        let answer = post(path.to_string(), body).await.unwrap();
        let status = answer.status();
        let refusal: Value = answer.json().await.unwrap();
        assert_eq!(status, 422, "{path} {body}: {refusal}");
        assert_eq!(refusal["error"]["code"], "invalid_field", "{refusal}");
        assert!(
            refusal["error"]["message"]
                .as_str()
                .unwrap()
                .contains("a JSON object"),
            "{refusal}"
        );
    }
    for body in ["", "null", "{}", r#"{"archive": false}"#] {
        let answer = post("/v1/subjects/someone/exports".to_string(), body)
            .await
            .unwrap();
        assert_eq!(answer.status(), 202, "{body:?}");
    }
}
