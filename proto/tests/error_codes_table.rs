//! The API chapter's table of error codes (docs/api.md) lists exactly `ErrorCode::ALL`, in order, with
//! each code's HTTP status and whether it is retried.

use locality_proto::{ErrorCode, Recovery};

const API_DOCS: &str = include_str!("../../docs/api.md");

#[test]
fn the_api_docs_list_every_error_code_with_its_status_and_recovery() {
    let section = API_DOCS
        .split("## Error codes")
        .nth(1)
        .expect("docs/api.md has an Error codes section");
    let rows: Vec<Vec<String>> = section
        .lines()
        .skip_while(|line| !line.starts_with("| code"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect()
        })
        .collect();
    assert_eq!(
        rows.len(),
        ErrorCode::ALL.len(),
        "the table has {} rows for {} codes",
        rows.len(),
        ErrorCode::ALL.len()
    );
    for (row, code) in rows.iter().zip(ErrorCode::ALL) {
        assert_eq!(row[0], format!("`{}`", code.as_str()), "row {row:?}");
        let status = match code.http_status() {
            200 => "—".to_string(),
            status => status.to_string(),
        };
        assert_eq!(row[1], status, "HTTP status of {code}");
        let retried = match code.recovery() {
            Recovery::Retry => "yes",
            Recovery::Abort => "no",
        };
        assert_eq!(row[2], retried, "recovery of {code}");
        assert!(!row[3].is_empty(), "{code} has no meaning in docs/api.md");
    }
}
