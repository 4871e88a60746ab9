//! Listing and bulk deletion, a page at a time, with keys read raw.
//!
//! object_store's path type refuses keys a store may well hold (`a//b`, `a/./b`,
//! control characters); its listing fails on the first such key and never gets past
//! it. Rights operations must not stop there: one pipeline's odd key would stop a
//! subject's erasure for good and a region's sweep for every tenant. So a listing here
//! returns keys as strings, exactly as the store has them:
//!
//! - S3: `ListObjectsV2` with `encoding-type=url` (rusty-s3 builds and signs the request
//!   with the credentials object_store resolved), `DeleteObjects` 1,000 keys a request,
//!   and `ListMultipartUploads`/`AbortMultipartUpload` for unfinished uploads;
//! - a local directory: a walk of the directory in key order, each directory read as a
//!   stream keeping only what the page can use (bounded memory however large it is);
//! - other stores (GCS, Azure, memory): object_store's own listing, whose odd keys
//!   fail the page with `invalid_key`.
//!
//! Pages come in key order and resume after a key, so a listing interrupted anywhere
//! picks up where it stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use locality_proto::time::{millis_of, parse_rfc3339, Millis};
use object_store::aws::AwsCredentialProvider;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use rusty_s3::actions::{ListObjectsV2, ObjectIdentifier, S3Action};
use rusty_s3::{Bucket, Credentials};

use super::{RegionStore, StoreError};

/// Objects per page, and keys per bulk delete (S3's most for both).
pub const PAGE: usize = 1000;

/// How long a signed raw request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(300);

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key as the store holds it.
    pub key: String,
    pub size: u64,
    pub last_modified_ms: Millis,
}

impl Listed {
    /// Whether object_store's path type refuses the key (it can still be deleted here).
    pub fn is_odd(&self) -> bool {
        ObjectPath::parse(&self.key).is_err()
    }
}

/// A page of a listing.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub objects: Vec<Listed>,
    /// Entries the listing could not read at all (a file name that is not UTF-8).
    pub unreadable: u64,
    /// More may follow the last object of this page.
    pub truncated: bool,
}

impl Page {
    /// Where the next page starts: after this page's last key.
    pub fn cursor(&self) -> Option<&str> {
        self.objects.last().map(|object| object.key.as_str())
    }
}

/// Every object under `prefix` after `after`, a page at a time.
pub(super) fn pages<'a>(
    store: &'a RegionStore,
    prefix: &'a str,
    after: Option<String>,
) -> impl futures::Stream<Item = Result<Listed, StoreError>> + 'a {
    futures::stream::try_unfold((after, false), move |(after, done)| async move {
        if done {
            return Ok(None);
        }
        let page = store.list_page(prefix, after.as_deref(), PAGE).await?;
        let next = page.cursor().map(str::to_string);
        let done = !page.truncated || next.is_none();
        Ok(Some((
            futures::stream::iter(page.objects.into_iter().map(Ok)),
            (next, done),
        )))
    })
    .try_flatten()
}

/// How a store is listed and bulk-deleted.
#[derive(Debug)]
pub(super) enum Raw {
    S3(S3Raw),
    Local(LocalRaw),
    /// object_store's own listing and delete stream.
    Generic,
}

impl Raw {
    pub(super) async fn list_page(
        &self,
        store: &RegionStore,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        match self {
            Raw::S3(s3) => s3.list_page(store, prefix, after, limit).await,
            Raw::Local(local) => local.list_page(store, prefix, after, limit).await,
            Raw::Generic => generic_list_page(store, prefix, after, limit).await,
        }
    }

    pub(super) async fn delete_many(
        &self,
        store: &RegionStore,
        keys: &[String],
    ) -> Result<(), StoreError> {
        match self {
            Raw::S3(s3) => s3.delete_many(store, keys).await,
            Raw::Local(local) => local.delete_many(store, keys).await,
            Raw::Generic => generic_delete_many(store, keys).await,
        }
    }

    pub(super) async fn abort_uploads(
        &self,
        store: &RegionStore,
        prefix: &str,
        begun_by_ms: Millis,
    ) -> Result<u64, StoreError> {
        match self {
            Raw::S3(s3) => s3.abort_uploads(store, prefix, begun_by_ms).await,
            Raw::Local(local) => local.abort_uploads(store, prefix, begun_by_ms).await,
            // Their unfinished uploads expire by the store's own rules.
            Raw::Generic => Ok(0),
        }
    }
}

fn raw_error(store: &RegionStore, key: &str, reason: String, transient: bool) -> StoreError {
    StoreError::Raw {
        region: store.region.clone(),
        key: key.to_string(),
        reason,
        transient,
    }
}

async fn generic_list_page(
    store: &RegionStore,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Page, StoreError> {
    let path = store.path(prefix.trim_end_matches('/'))?;
    let path = (!prefix.is_empty()).then_some(path);
    let listing = match after {
        Some(after) => store
            .inner
            .list_with_offset(path.as_ref(), &store.path(after)?),
        None => store.inner.list(path.as_ref()),
    };
    let mut objects: Vec<Listed> = listing
        .take(limit + 1)
        .map_ok(|meta| Listed {
            key: meta.location.to_string(),
            size: meta.size,
            last_modified_ms: meta.last_modified.timestamp_millis(),
        })
        .try_collect()
        .await
        .map_err(|e| store.backend(prefix, e))?;
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let truncated = objects.len() > limit;
    objects.truncate(limit);
    Ok(Page {
        objects,
        unreadable: 0,
        truncated,
    })
}

async fn generic_delete_many(store: &RegionStore, keys: &[String]) -> Result<(), StoreError> {
    let paths: Vec<ObjectPath> = keys
        .iter()
        .map(|key| store.path(key))
        .collect::<Result<_, _>>()?;
    let mut deleted = store
        .inner
        .delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed());
    while let Some(outcome) = deleted.next().await {
        match outcome {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store.backend("(bulk delete)", e)),
        }
    }
    Ok(())
}

/// A local directory, walked in key order.
#[derive(Debug)]
pub(super) struct LocalRaw {
    pub(super) root: PathBuf,
}

/// object_store's local store stages an upload as `NAME#N` beside its final name.
fn is_staged(name: &str) -> bool {
    name.contains('#')
}

impl LocalRaw {
    async fn list_page(
        &self,
        store: &RegionStore,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let root = self.root.clone();
        let (prefix, after) = (prefix.to_string(), after.map(str::to_string));
        let region = store.region.clone();
        tokio::task::spawn_blocking(move || walk(&root, &prefix, after.as_deref(), limit))
            .await
            .map_err(|e| StoreError::Raw {
                region,
                key: String::new(),
                reason: format!("the directory walk failed: {e}"),
                transient: false,
            })
    }

    async fn delete_many(&self, store: &RegionStore, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            match ObjectPath::parse(key) {
                Ok(path) => match store.inner.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store.backend(key, e)),
                },
                Err(_) => self.remove_raw(store, key)?,
            }
        }
        Ok(())
    }

    /// Removes a file whose name object_store refuses, and the directories it leaves
    /// empty. Such a key comes from a walk of this directory, so it has no `.` or `..`
    /// segment; one that does is refused rather than followed out of the store.
    fn remove_raw(&self, store: &RegionStore, key: &str) -> Result<(), StoreError> {
        let escapes = key.starts_with('/')
            || key
                .split('/')
                .any(|segment| segment == "." || segment == "..");
        if escapes {
            return Err(StoreError::InvalidKey {
                key: key.to_string(),
                reason: "a `.` or `..` segment in a local directory".into(),
            });
        }
        let file = self.root.join(key);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(raw_error(store, key, err.to_string(), false)),
        }
        let mut parent = file.parent();
        while let Some(dir) = parent.filter(|dir| *dir != self.root) {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
            parent = dir.parent();
        }
        Ok(())
    }

    async fn abort_uploads(
        &self,
        store: &RegionStore,
        prefix: &str,
        begun_by_ms: Millis,
    ) -> Result<u64, StoreError> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let region = store.region.clone();
        tokio::task::spawn_blocking(move || {
            let mut aborted = 0;
            for entry in walkdir::WalkDir::new(&dir)
                .min_depth(1)
                .into_iter()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy();
                if !entry.file_type().is_file() || !is_staged(&name) {
                    continue;
                }
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                let begun = metadata.created().or_else(|_| metadata.modified());
                if begun.is_ok_and(|begun| millis_of(begun) <= begun_by_ms)
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    aborted += 1;
                }
            }
            aborted
        })
        .await
        .map_err(|e| StoreError::Raw {
            region,
            key: String::new(),
            reason: format!("the directory walk failed: {e}"),
            transient: false,
        })
    }
}

/// Up to `limit` files under `prefix` in key order, after the key `after`.
fn walk(root: &Path, prefix: &str, after: Option<&str>, limit: usize) -> Page {
    let mut page = Page::default();
    let start = root.join(prefix.trim_end_matches('/'));
    if start.is_dir() {
        walk_dir(root, &start, after.map(str::as_bytes), limit, &mut page);
    }
    page
}

/// A directory entry as the walk orders it: its name, with `/` after a directory's, so
/// entries sort as the keys under them do.
struct Child {
    sort_key: Vec<u8>,
    path: PathBuf,
    is_dir: bool,
}

impl PartialEq for Child {
    fn eq(&self, other: &Self) -> bool {
        self.sort_key == other.sort_key
    }
}
impl Eq for Child {}
impl PartialOrd for Child {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Child {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key.cmp(&other.sort_key)
    }
}

/// Fills `page` from `dir` and below, in key order; `true` once the page is full.
///
/// A directory is read as a stream, and only the entries a page can still use (the
/// smallest past the cursor, as many as the page has room for plus one) are kept: a
/// directory of millions of entries costs a page's memory, not its size. When what was
/// kept held fewer files than that (empty directories), the directory is read again
/// past the last entry used.
fn walk_dir(root: &Path, dir: &Path, after: Option<&[u8]>, limit: usize, page: &mut Page) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Some(dir_key) = dir.strip_prefix(root).ok().and_then(Path::to_str) else {
        page.unreadable += 1;
        return false;
    };
    let dir_key = format!("{dir_key}/");
    let mut past: Option<Vec<u8>> = None;
    loop {
        let room = limit + 1 - page.objects.len();
        let Ok(entries) = std::fs::read_dir(dir) else {
            page.unreadable += 1;
            return false;
        };
        let mut kept = std::collections::BinaryHeap::with_capacity(room + 1);
        for entry in entries {
            let Ok(entry) = entry else {
                continue;
            };
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let is_dir = file_type.is_dir();
            if !is_dir && !file_type.is_file() {
                continue;
            }
            let mut sort_key = entry.file_name().as_bytes().to_vec();
            if is_dir {
                sort_key.push(b'/');
            }
            if past.as_ref().is_some_and(|past| sort_key <= *past) {
                continue;
            }
            if let Some(after) = after {
                let key = [dir_key.as_bytes(), &sort_key].concat();
                // A file at or before the cursor; a directory whose every key is.
                let before = if is_dir {
                    after > key.as_slice() && !after.starts_with(&key)
                } else {
                    key.as_slice() <= after
                };
                if before {
                    continue;
                }
            }
            kept.push(Child {
                sort_key,
                path: entry.path(),
                is_dir,
            });
            if kept.len() > room {
                kept.pop();
            }
        }
        let read_to_the_end = kept.len() < room;
        let children = kept.into_sorted_vec();
        past = children.last().map(|child| child.sort_key.clone());
        for child in children {
            let Some(key) = child
                .path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .map(str::to_string)
            else {
                page.unreadable += 1;
                continue;
            };
            if child.is_dir {
                if walk_dir(root, &child.path, after, limit, page) {
                    return true;
                }
                continue;
            }
            if is_staged(&key) {
                continue;
            }
            if page.objects.len() == limit {
                page.truncated = true;
                return true;
            }
            let Ok(metadata) = std::fs::symlink_metadata(&child.path) else {
                page.unreadable += 1;
                continue;
            };
            page.objects.push(Listed {
                key,
                size: metadata.len(),
                last_modified_ms: metadata.modified().map(millis_of).unwrap_or(0),
            });
        }
        if read_to_the_end {
            return false;
        }
    }
}

/// An S3 bucket, listed and bulk-deleted raw.
pub(super) struct S3Raw {
    pub(super) http: reqwest::Client,
    pub(super) bucket: Bucket,
    /// The store URL's own prefix (`s3://bucket/PREFIX`), `/`-terminated or empty.
    pub(super) prefix: String,
    pub(super) credentials: Option<AwsCredentialProvider>,
}

impl std::fmt::Debug for S3Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Raw")
            .field("bucket", &self.bucket.name())
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Characters XML 1.0 cannot carry, even escaped: such a key cannot be named in a
/// `DeleteObjects` body.
fn xml_unsafe(key: &str) -> bool {
    key.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

fn has_dot_segment(key: &str) -> bool {
    key.split('/')
        .any(|segment| segment == "." || segment == "..")
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MultipartUploads {
    #[serde(default)]
    upload: Vec<MultipartUpload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MultipartUpload {
    key: String,
    upload_id: String,
    initiated: String,
}

impl S3Raw {
    async fn credentials(&self, store: &RegionStore) -> Result<Option<Credentials>, StoreError> {
        let Some(provider) = &self.credentials else {
            return Ok(None);
        };
        let credential = provider
            .get_credential()
            .await
            .map_err(|e| store.backend("(credentials)", e))?;
        Ok(Some(match &credential.token {
            Some(token) => Credentials::new_with_token(
                credential.key_id.clone(),
                credential.secret_key.clone(),
                token.clone(),
            ),
            None => Credentials::new(credential.key_id.clone(), credential.secret_key.clone()),
        }))
    }

    /// Sends a signed request and returns the body of a successful answer.
    async fn send(
        &self,
        store: &RegionStore,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<String, StoreError> {
        let response = request
            .send()
            .await
            .map_err(|e| raw_error(store, what, e.to_string(), true))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| raw_error(store, what, e.to_string(), true))?;
        if !status.is_success() {
            let reason = format!("{status}: {}", body.chars().take(300).collect::<String>());
            // 501: the server does not do this at all, however often it is asked.
            let transient = status.is_server_error() && status != 501;
            return Err(raw_error(store, what, reason, transient));
        }
        Ok(body)
    }

    async fn list_page(
        &self,
        store: &RegionStore,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let credentials = self.credentials(store).await?;
        let mut action = ListObjectsV2::new(&self.bucket, credentials.as_ref());
        action.with_prefix(format!("{}{prefix}", self.prefix));
        if let Some(after) = after {
            action.with_start_after(format!("{}{after}", self.prefix));
        }
        action.with_max_keys(limit.min(PAGE));
        let url = action.sign(SIGNED_FOR);
        let body = self.send(store, prefix, self.http.get(url)).await?;
        let parsed = ListObjectsV2::parse_response(&body)
            .map_err(|e| raw_error(store, prefix, format!("an unreadable listing: {e}"), false))?;
        let mut page = Page {
            truncated: parsed.next_continuation_token.is_some(),
            ..Page::default()
        };
        for content in parsed.contents {
            let Some(key) = content.key.strip_prefix(&self.prefix) else {
                page.unreadable += 1;
                continue;
            };
            let last_modified_ms = content
                .last_modified
                .as_deref()
                .and_then(|time| parse_rfc3339(time).ok())
                .unwrap_or(0);
            page.objects.push(Listed {
                key: key.to_string(),
                size: content.size.unwrap_or(0),
                last_modified_ms,
            });
        }
        Ok(page)
    }

    async fn delete_many(&self, store: &RegionStore, keys: &[String]) -> Result<(), StoreError> {
        let credentials = self.credentials(store).await?;
        let (single, batch): (Vec<&String>, Vec<&String>) =
            keys.iter().partition(|key| xml_unsafe(key));
        for key in single {
            if has_dot_segment(key) {
                return Err(StoreError::InvalidKey {
                    key: key.clone(),
                    reason: "neither an XML body nor a URL can name it (a control character and a `.` segment)".into(),
                });
            }
            let url = self
                .bucket
                .delete_object(credentials.as_ref(), &format!("{}{key}", self.prefix))
                .sign(SIGNED_FOR);
            match self.send(store, key, self.http.delete(url)).await {
                Ok(_) => {}
                Err(StoreError::Raw { reason, .. }) if reason.starts_with("404") => {}
                Err(err) => return Err(err),
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let objects: Vec<ObjectIdentifier> = batch
            .iter()
            .map(|key| ObjectIdentifier::new(format!("{}{key}", self.prefix)))
            .collect();
        let mut action = self
            .bucket
            .delete_objects(credentials.as_ref(), objects.iter());
        action.set_quiet(true);
        let url = action.sign(SIGNED_FOR);
        let (body, md5) = action.body_with_md5();
        let request = self.http.post(url).header("content-md5", md5).body(body);
        let answer = self.send(store, "(bulk delete)", request).await?;
        let answer = rusty_s3::actions::DeleteObjectsResponse::parse(&answer).map_err(|e| {
            raw_error(
                store,
                "(bulk delete)",
                format!("an unreadable answer: {e}"),
                false,
            )
        })?;
        match answer.errors.iter().find(|error| error.code != "NoSuchKey") {
            None => Ok(()),
            Some(error) => Err(raw_error(
                store,
                &error.key,
                format!("not deleted: {}", error.code),
                error.code == "InternalError" || error.code == "SlowDown",
            )),
        }
    }

    async fn abort_uploads(
        &self,
        store: &RegionStore,
        prefix: &str,
        begun_by_ms: Millis,
    ) -> Result<u64, StoreError> {
        let credentials = self.credentials(store).await?;
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut markers: Option<(String, String)> = None;
        let mut aborted = 0;
        loop {
            let mut query: Vec<(&str, &str)> = vec![("prefix", &full_prefix), ("uploads", "")];
            if let Some((key, id)) = &markers {
                query.push(("key-marker", key));
                query.push(("upload-id-marker", id));
            }
            let url = match &credentials {
                Some(credentials) => rusty_s3::signing::sign(
                    &jiff::Timestamp::now(),
                    rusty_s3::Method::Get,
                    self.bucket.base_url().clone(),
                    credentials.key(),
                    credentials.secret(),
                    credentials.token(),
                    self.bucket.region(),
                    SIGNED_FOR.as_secs(),
                    query.iter().copied(),
                    std::iter::empty(),
                ),
                None => {
                    let mut url = self.bucket.base_url().clone();
                    url.query_pairs_mut().extend_pairs(query.iter().copied());
                    url
                }
            };
            let body = match self.send(store, prefix, self.http.get(url)).await {
                Ok(body) => body,
                Err(StoreError::Raw { reason, .. }) if reason.starts_with("501") => {
                    // Some S3-compatible servers keep no list of unfinished uploads; a
                    // bucket lifecycle rule must abort them there.
                    tracing::warn!(prefix, "the store cannot list unfinished uploads; none aborted (give its bucket a lifecycle rule that aborts incomplete multipart uploads)");
                    return Ok(aborted);
                }
                Err(err) => return Err(err),
            };
            let listing: MultipartUploads = quick_xml::de::from_str(&body).map_err(|e| {
                raw_error(
                    store,
                    prefix,
                    format!("an unreadable upload listing: {e}"),
                    false,
                )
            })?;
            for upload in &listing.upload {
                let begun = parse_rfc3339(&upload.initiated).unwrap_or(0);
                if begun > begun_by_ms {
                    continue;
                }
                let url = self
                    .bucket
                    .abort_multipart_upload(credentials.as_ref(), &upload.key, &upload.upload_id)
                    .sign(SIGNED_FOR);
                match self.send(store, &upload.key, self.http.delete(url)).await {
                    Ok(_) => aborted += 1,
                    Err(StoreError::Raw { reason, .. }) if reason.starts_with("404") => {}
                    Err(err) => return Err(err),
                }
            }
            match (
                listing.is_truncated,
                listing.next_key_marker,
                listing.next_upload_id_marker,
            ) {
                (true, Some(key), Some(id)) => markers = Some((key, id)),
                _ => return Ok(aborted),
            }
        }
    }
}

impl RegionStore {
    /// Whether this store lists and deletes raw (S3, local directories): odd keys are
    /// then listed and deleted too.
    pub fn lists_raw(&self) -> bool {
        !matches!(*self.raw, Raw::Generic)
    }

    pub(super) fn raw_s3(
        region: locality_proto::RegionId,
        inner: Arc<dyn object_store::ObjectStore>,
        raw: S3Raw,
    ) -> Self {
        Self {
            region,
            inner,
            raw: Arc::new(Raw::S3(raw)),
            keeping: super::Keeping::Metadata,
            attempts: super::DEFAULT_ATTEMPTS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, key: &str) {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    /// Every key once, in order, however small the page and wherever the cursor falls:
    /// files beside a directory of the same stem, empty directories, staged uploads, and
    /// a flat directory far larger than a page.
    #[test]
    fn a_walk_pages_through_every_key_in_order_from_any_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // `a-b` < `a/...` < `a0`: a directory sorts as its name and `/`, as S3 keys do.
        let mut expected = vec![
            "t/a-b".to_string(),
            "t/a/b".to_string(),
            "t/a/c/d".to_string(),
            "t/a0".to_string(),
            "t/b".to_string(),
        ];
        expected.extend((0..250).map(|n| format!("t/flat/{n:04}")));
        expected.push("t/z".to_string());
        for key in &expected {
            write(root, key);
        }
        for n in 0..5 {
            std::fs::create_dir_all(root.join(format!("t/empty-{n}/inner"))).unwrap();
        }
        write(root, "t/flat/0001#3");
        expected.sort();
        for limit in [1, 7, 100, 1000] {
            let mut listed = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = walk(root, "t/", after.as_deref(), limit);
                assert!(page.objects.len() <= limit);
                listed.extend(page.objects.iter().map(|object| object.key.clone()));
                match page.cursor() {
                    Some(cursor) if page.truncated => after = Some(cursor.to_string()),
                    _ => break,
                }
            }
            assert_eq!(listed, expected, "pages of {limit}");
        }
        let from_the_middle = walk(root, "t/", Some("t/flat/0123"), 3);
        let keys: Vec<&str> = from_the_middle
            .objects
            .iter()
            .map(|o| o.key.as_str())
            .collect();
        assert_eq!(keys, ["t/flat/0124", "t/flat/0125", "t/flat/0126"]);
        assert!(from_the_middle.truncated);
    }
}
