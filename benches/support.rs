//! What the end-to-end benches share: a fresh database with a `messages` table, the real gateway
//! in-process on it (port 0), and cleanup.

use std::sync::Arc;

use actix_web::dev::ServerHandle;
use livegate::app::Application;
use livegate::config::Config;
use livegate::hub::Hub;
use sqlx::{Connection, Executor, PgConnection};

pub struct Bench {
    pub port: u16,
    #[allow(dead_code)] // not every bench reaches into the hub
    pub hub: Arc<Hub>,
    /// A connection for writing rows.
    pub writer: PgConnection,
    handle: ServerHandle,
    admin: PgConnection,
    name: String,
}

impl Bench {
    /// `LIVEGATE_TEST_DATABASE_URL` points at another PostgreSQL server.
    pub async fn start() -> Bench {
        let server =
            std::env::var("LIVEGATE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let name = format!("livegate_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&format!("{server}/postgres")).await.expect("connect to PostgreSQL");
        admin.execute(format!("create database {name}").as_str()).await.expect("create database");
        let url = format!("{server}/{name}");
        let mut writer = PgConnection::connect(&url).await.expect("connect");
        writer.execute("create table messages (id bigserial primary key, body text)").await.expect("create table");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().expect("address");
        config.database.url = url;
        config.feed.tables = vec!["messages".into()];
        let app = Application::build(config).await.expect("start livegate");
        let (port, hub, handle) = (app.port(), app.hub(), app.handle());
        tokio::spawn(app.run_until_stopped());
        Bench { port, hub, writer, handle, admin, name }
    }

    pub async fn stop(mut self) {
        self.handle.stop(false).await;
        drop(self.writer);
        let _ = self.admin.execute(format!("drop database {} with (force)", self.name).as_str()).await;
    }
}
