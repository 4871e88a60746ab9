//! The PostgreSQL server that scripts/test.sh starts: a fresh database per use, and
//! a dump of one for tests that search everything it holds.

use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("LOCALITY_TEST_DATABASE_URL").expect(
        "LOCALITY_TEST_DATABASE_URL is not set: these tests need the PostgreSQL server that \
         scripts/test.sh starts; run the suite with scripts/test.sh",
    )
}

/// Creates an empty database and returns its URL.
pub async fn fresh() -> String {
    let admin = admin_url();
    let name = format!("locality_test_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(&admin)
        .await
        .expect("the test PostgreSQL server is reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// Everything a database holds, as pg_dump writes it.
pub fn dump(url: &str) -> String {
    let bin = std::env::var("LOCALITY_TEST_PG_BIN")
        .expect("LOCALITY_TEST_PG_BIN is not set: run the suite with scripts/test.sh");
    let output = std::process::Command::new(format!("{bin}/pg_dump"))
        .arg("--dbname")
        .arg(url)
        .output()
        .expect("pg_dump runs");
    assert!(
        output.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("a text dump")
}

/// The job message the control plane stored (and published) for a job.
pub async fn stored_message(database_url: &str, job_id: &str) -> Vec<u8> {
    let pool = sqlx::PgPool::connect(database_url).await.unwrap();
    let message: String = sqlx::query_scalar("SELECT message FROM jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    message.into_bytes()
}

/// Rows inserted, updated and deleted in a database, and its committed transactions, as
/// PostgreSQL counts them (`pg_stat_database`, flushed within a second or so).
pub async fn writes(url: &str) -> [i64; 4] {
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let row: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT tup_inserted, tup_updated, tup_deleted, xact_commit FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    [row.0, row.1, row.2, row.3]
}
