//! A fresh database per test (or bench), dropped afterwards. Shared with `benches/` by path.

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};

/// Server URL without a database; `LIVEGATE_TEST_DATABASE_URL` overrides it.
pub fn server_url() -> String {
    std::env::var("LIVEGATE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database created for one test and dropped after it.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("livegate_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin =
            PgConnection::connect(&format!("{}/postgres", server_url())).await.expect("connect to the test server");
        admin.execute(format!("create database {name}").as_str()).await.expect("create test database");
        let url = format!("{}/{name}", server_url());
        let pool = PgPoolOptions::new().max_connections(8).connect(&url).await.expect("connect to test database");
        TestDb { name, url, pool }
    }

    pub async fn execute(&self, sql: &str) {
        self.pool.execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop from a thread of its own: Drop cannot await, and the test's runtime is ending.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", server_url())).await {
                    let _ = admin.execute(format!("drop database if exists {name} with (force)").as_str()).await;
                }
            });
        })
        .join();
    }
}
