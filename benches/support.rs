//! What the end-to-end benches share: a fresh database with a `messages` table (the integration
//! tests' own [`TestDb`], included by path), the real gateway in-process on it (port 0), and
//! cleanup.

use std::sync::Arc;

use actix_web::dev::ServerHandle;
use livegate::app::Application;
use livegate::config::Config;
use livegate::hub::Hub;
use sqlx::{Connection, PgConnection};

#[path = "../tests/integration/support/database.rs"]
mod database;

use database::TestDb;

pub struct Bench {
    pub port: u16,
    #[allow(dead_code)] // not every bench reaches into the hub
    pub hub: Arc<Hub>,
    /// A connection for writing rows.
    pub writer: PgConnection,
    handle: ServerHandle,
    /// Dropped (with its database) when the bench stops.
    _db: TestDb,
}

impl Bench {
    /// `LIVEGATE_TEST_DATABASE_URL` points at another PostgreSQL server.
    #[allow(dead_code)] // a bench may start with more tables instead
    pub async fn start() -> Bench {
        Bench::start_with(&[], |_| {}).await
    }

    /// [`Bench::start`], after running `setup` (SQL) on the fresh database, with `configure`
    /// adjusting the config first (more tables to watch than `messages`, limits).
    pub async fn start_with(setup: &[String], configure: impl FnOnce(&mut Config)) -> Bench {
        let db = TestDb::create().await;
        db.execute("create table messages (id bigserial primary key, body text)").await;
        for sql in setup {
            db.execute(sql).await;
        }
        let writer = PgConnection::connect(&db.url).await.expect("connect");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("address");
        config.database.url = db.url.clone();
        config.feed.tables = vec!["messages".into()];
        configure(&mut config);
        let app = Application::build(config).await.expect("start livegate");
        let (port, hub, handle) = (app.port(), app.hub(), app.handle());
        tokio::spawn(app.run_until_stopped());
        Bench { port, hub, writer, handle, _db: db }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
        drop(self.writer);
    }
}
