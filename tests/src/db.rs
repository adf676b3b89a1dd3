//! A fresh PostgreSQL database per test, created from `TEST_DATABASE_URL` (a role that
//! may create databases) and dropped when the test ends.

use sqlx::{Connection, PgConnection, PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
    pub pool: PgPool,
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54330/postgres".to_owned())
}

fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{db}")
}

impl TestDb {
    /// Creates an empty database with the migrations applied.
    pub async fn create() -> Self {
        let db = Self::create_empty().await;
        projector::migrate(&db.url).await.expect("migrations apply");
        db
    }

    /// Creates an empty database without migrations.
    pub async fn create_empty() -> Self {
        let admin_url = admin_url();
        let name = format!("t_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("cannot reach TEST_DATABASE_URL ({admin_url}): {e}; run scripts/test")
        });
        // The reader role is global to the cluster. Created by a migration inside its
        // transaction, a concurrent migration of another test's database could look it
        // up before that commits ("role does not exist"); created here, on its own, it
        // is committed before any migration runs (as scripts/dev does for its cluster).
        sqlx::query(
            "DO $$ BEGIN CREATE ROLE sync_reader NOLOGIN NOBYPASSRLS; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        )
        .execute(&mut admin)
        .await
        .expect("create the reader role");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        let url = with_database(&admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect test database");
        Self {
            name,
            url,
            admin_url,
            pool,
        }
    }

    pub async fn checkpoint(&self, projector: &str) -> u64 {
        sqlx::query_scalar::<_, i64>("SELECT last_seq FROM projector_checkpoints WHERE name = $1")
            .bind(projector)
            .fetch_optional(&self.pool)
            .await
            .expect("read checkpoint")
            .unwrap_or(0) as u64
    }

    /// How far both stages of projector `name` (change log and records) have applied
    /// the log.
    pub async fn projected(&self, projector: &str) -> u64 {
        let log = self.checkpoint(projector).await;
        let records = self
            .checkpoint(&projector::records::checkpoint_name(projector))
            .await;
        log.min(records)
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }

    /// A table's rows as JSON text, in a stable order: equal outputs mean equal tables.
    /// Runs a statement (DDL included) on the test database.
    pub async fn execute(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of every row, as text.
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        sqlx::query_scalar(sql)
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn dump(&self, sql: &str) -> Vec<String> {
        sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM ({sql}) t"))
            .fetch_all(&self.pool)
            .await
            .expect("dump rows")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside or outside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}
