//! Test harness: a real nats-server per test (own port, own store directory, killed on
//! drop), a fresh PostgreSQL database per test, the projector and the gateway started
//! in-process against them, and a small HTTP client speaking the sync protocol.

mod db;
mod nats;
mod wait;

use std::{sync::Once, time::Duration};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};

pub use db::TestDb;
pub use nats::{TestNats, role_password};
pub use wait::eventually;

/// HS256 secret of every test gateway.
pub const SECRET: &str = "test-secret-of-at-least-32-bytes-0123";

/// Service key of every test gateway's internal API.
pub const SERVICE_KEY: &str = "test-service-key";

/// Logs go to stderr only when `TEST_LOG` is set.
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            projector::telemetry::init();
        }
    });
}

/// A projector running in this process.
pub struct RunningProjector {
    /// Where it serves `GET /metrics`.
    pub metrics: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningProjector {
    pub async fn start(config: projector::Config) -> Self {
        let projector = projector::Projector::build(config)
            .await
            .expect("projector builds");
        let metrics = projector
            .metrics_addr()
            .map(|addr| format!("http://{addr}/metrics"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(projector.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// Stops it cleanly (the batch in flight is finished).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningProjector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connections of a process of `role` (its NATS user when the server has users).
fn connections(nats: &TestNats, db: &TestDb, role: &str) -> projector::Connections {
    projector::Connections {
        nats_url: nats.url(),
        nats_user: nats.user_for(role),
        nats_password: nats
            .user_for(role)
            .map(|user| projector::Secret(nats::role_password(&user))),
        database_url: db.url.clone(),
        stream: schemas::stream::DEFAULT_STREAM.to_owned(),
        stream_replicas: 1,
    }
}

/// Projector configuration for a test stack.
pub fn projector_config(nats: &TestNats, db: &TestDb, name: &str) -> projector::Config {
    projector::Config {
        conn: connections(nats, db, "projector"),
        name: name.to_owned(),
        batch_size: 1000,
        linger_ms: 4,
        metrics_listen: Some("127.0.0.1:0".parse().expect("literal address")),
    }
}

/// Gateway configuration for a test stack (port 0, HS256 secret).
pub fn gateway_config(nats: &TestNats, db: &TestDb) -> gateway::Config {
    gateway::Config {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        conn: connections(nats, db, "gateway"),
        projector_name: schemas::projection::DEFAULT_PROJECTOR.to_owned(),
        jwt_hs256_secret: Some(gateway::config::Secret(SECRET.to_owned())),
        jwks_url: None,
        jwt_issuer: None,
        jwt_audience: None,
        service_key: Some(gateway::config::Secret(SERVICE_KEY.to_owned())),
        read_your_writes_timeout_ms: 10_000,
        publish_timeout_ms: 2_000,
        tail_events: 100_000,
        tail_memory_mib: 128,
        cors_allowed_origins: "*".to_owned(),
        compress_responses: true,
        metrics_token: None,
    }
}

/// A gateway running in this process.
pub struct RunningGateway {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningGateway {
    pub async fn start(config: gateway::Config) -> Self {
        let app = gateway::App::build(config).await.expect("gateway builds");
        let base = format!("http://{}", app.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            base,
            stop: Some(stop),
            task,
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// The whole stack: nats-server, a database, the projector and the gateway.
pub struct TestApp {
    pub nats: TestNats,
    pub db: TestDb,
    pub projector: Option<RunningProjector>,
    pub gateway: RunningGateway,
    pub http: reqwest::Client,
}

/// A response: status and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_on(TestNats::start().await).await
    }

    /// The system on a given nats-server (e.g. one with a stock configuration).
    pub async fn spawn_on(nats: TestNats) -> Self {
        init_logging();
        let db = TestDb::create().await;
        let projector = RunningProjector::start(projector_config(
            &nats,
            &db,
            schemas::projection::DEFAULT_PROJECTOR,
        ))
        .await;
        let gateway = RunningGateway::start(gateway_config(&nats, &db)).await;
        Self {
            nats,
            db,
            projector: Some(projector),
            gateway,
            http: http_client(),
        }
    }

    pub fn token(&self, user: &str) -> String {
        gateway::auth::mint_dev_token(SECRET, user, Duration::from_secs(3600)).expect("token mints")
    }

    /// `POST /sync/{app}` as `user` from `client`.
    pub async fn push(&self, user: &str, client: &str, app: &str, body: &Value) -> Reply {
        self.push_as(&self.gateway.base, user, client, app, body)
            .await
    }

    /// `GET /sync/{app}/pull?collection=&since=` as `user` from `client`.
    pub async fn pull(
        &self,
        user: &str,
        client: &str,
        app: &str,
        table: &str,
        since: &str,
    ) -> Reply {
        let query = [("collection", table), ("since", since)];
        self.pull_as(&self.gateway.base, user, client, app, &query)
            .await
    }

    /// Pulls every page from `since`, returning all changes and the final cursor.
    pub async fn pull_all(
        &self,
        user: &str,
        client: &str,
        app: &str,
        table: &str,
        since: &str,
    ) -> (Vec<Value>, String) {
        let mut cursor = since.to_owned();
        let mut all = Vec::new();
        loop {
            let reply = self.pull(user, client, app, table, &cursor).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            all.extend(
                reply.body["serverChanges"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            cursor = reply.body["syncedUntil"]
                .as_str()
                .expect("syncedUntil")
                .to_owned();
            if reply.body["hasMore"] != true {
                return (all, cursor);
            }
        }
    }

    /// Record-change messages in the log stream (membership events, such as those
    /// creating a personal space on first use, are not counted).
    pub async fn stream_messages(&self) -> u64 {
        self.nats
            .subject_messages(schemas::stream::DEFAULT_STREAM, "sync.>")
            .await
    }

    /// Every message of the log, in order.
    pub async fn log_messages(&self) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let js = self.nats.jetstream().await;
        let stream = js
            .get_stream(schemas::stream::DEFAULT_STREAM)
            .await
            .expect("stream exists");
        let last = stream.cached_info().state.last_sequence;
        let mut messages = Vec::new();
        for seq in 1..=last {
            messages.push(stream.get_raw_message(seq).await.expect("message"));
        }
        messages
    }

    /// The `n`-th (from 1) record-change message of the log.
    pub async fn change_message(&self, n: usize) -> async_nats::jetstream::message::StreamMessage {
        let changes: Vec<_> = self
            .log_messages()
            .await
            .into_iter()
            .filter(|m| m.subject.starts_with("sync."))
            .collect();
        let found = changes.len();
        changes
            .into_iter()
            .nth(n - 1)
            .unwrap_or_else(|| panic!("the log has only {found} record changes"))
    }

    /// The atomic batches the messages of the log were published in, in log order: each
    /// batch's id (`Nats-Batch-Id`; empty for a message published on its own) and how
    /// many consecutive messages carry it.
    pub async fn log_batches(&self) -> Vec<(String, usize)> {
        let mut runs: Vec<(String, usize)> = Vec::new();
        for msg in self.log_messages().await {
            let batch = msg
                .headers
                .get(async_nats::header::NATS_BATCH_ID)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            match runs.last_mut() {
                Some((id, n)) if *id == batch && !batch.is_empty() => *n += 1,
                _ => runs.push((batch, 1)),
            }
        }
        runs
    }

    /// Every message in the log stream.
    pub async fn all_stream_messages(&self) -> u64 {
        self.nats
            .stream_state(schemas::stream::DEFAULT_STREAM)
            .await
            .messages
    }

    /// A second gateway on the same NATS and database.
    pub async fn another_gateway(&self) -> RunningGateway {
        self.another_gateway_with(|_| {}).await
    }

    /// A second gateway on the same NATS and database, configured by `tweak`.
    pub async fn another_gateway_with(
        &self,
        tweak: impl FnOnce(&mut gateway::Config),
    ) -> RunningGateway {
        let mut config = gateway_config(&self.nats, &self.db);
        tweak(&mut config);
        RunningGateway::start(config).await
    }

    /// A call to the internal API with the service key, on `gateway` (default: the
    /// app's own).
    pub async fn internal(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.gateway.base))
            .bearer_auth(SERVICE_KEY);
        if let Some(body) = body {
            req = req.json(&body);
        }
        send(req).await
    }

    /// Creates a shared space owned by `owner` and adds `members`; panics on failure.
    pub async fn create_space(&self, space: &str, owner: &str, members: &[(&str, &str)]) {
        let reply = self
            .internal(
                reqwest::Method::POST,
                "/internal/spaces",
                Some(serde_json::json!({
                    "spaceId": space, "type": "family", "name": space, "ownerId": owner,
                })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        for (user, role) in members {
            let reply = self
                .internal(
                    reqwest::Method::POST,
                    &format!("/internal/spaces/{space}/members"),
                    Some(serde_json::json!({ "userId": user, "role": role })),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        }
    }

    /// `GET /sync/{app}/pull` on any gateway, with extra query parameters.
    pub async fn pull_on(
        &self,
        base: &str,
        user: &str,
        app: &str,
        query: &[(&str, &str)],
    ) -> Reply {
        self.pull_as(base, user, &format!("{user}-reader"), app, query)
            .await
    }

    /// `POST /sync/{app}` on any gateway.
    pub async fn push_on(&self, base: &str, user: &str, app: &str, body: &Value) -> Reply {
        self.push_as(base, user, &format!("{user}-writer"), app, body)
            .await
    }

    async fn pull_as(
        &self,
        base: &str,
        user: &str,
        client: &str,
        app: &str,
        query: &[(&str, &str)],
    ) -> Reply {
        let req = self
            .http
            .get(format!("{base}/sync/{app}/pull"))
            .query(query)
            .bearer_auth(self.token(user))
            .header("x-client-id", client);
        send(req).await
    }

    /// `POST /sync/{app}` on any gateway as `user` from `client`.
    pub async fn push_as(
        &self,
        base: &str,
        user: &str,
        client: &str,
        app: &str,
        body: &Value,
    ) -> Reply {
        let req = self
            .http
            .post(format!("{base}/sync/{app}"))
            .bearer_auth(self.token(user))
            .header("x-client-id", client)
            .json(body);
        send(req).await
    }

    /// Waits until the log tail and the membership view of the gateway at `base` follow
    /// the log (push responses come from the tail, and access from the view, only then;
    /// before, both are read from PostgreSQL, which needs the projector).
    pub async fn wait_tail_live(&self, base: &str) {
        let http = &self.http;
        eventually(Duration::from_secs(20), || async move {
            let tail = send(http.get(format!("{base}/health"))).await.body["tail"]["live"] == true;
            let metrics = async {
                http.get(format!("{base}/metrics"))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()
            };
            tail && metrics
                .await
                .is_some_and(|m| m.lines().any(|l| l == "sync_membership_view_live 1"))
        })
        .await;
    }

    /// Stops the app's projector (cleanly); the log goes on without it.
    pub async fn stop_projector(&mut self) {
        self.projector.take().expect("running").stop().await;
    }

    /// Starts the app's projector again; it resumes at its checkpoint.
    pub async fn restart_projector(&mut self) {
        let config = projector_config(&self.nats, &self.db, schemas::projection::DEFAULT_PROJECTOR);
        self.projector = Some(RunningProjector::start(config).await);
    }

    /// Waits until the projector has applied everything in the log.
    pub async fn wait_projected(&self) {
        let last = self.stream_messages_last_seq().await;
        let db = &self.db;
        eventually(Duration::from_secs(20), || async move {
            db.projected(schemas::projection::DEFAULT_PROJECTOR).await >= last
        })
        .await;
    }

    pub async fn stream_messages_last_seq(&self) -> u64 {
        self.nats
            .stream_state(schemas::stream::DEFAULT_STREAM)
            .await
            .last_sequence
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let text = resp.text().await.expect("body read");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("non-JSON response ({status}): {text}"));
    Reply { status, body }
}

/// The record ids of a successful pull or push response's changes, in order.
pub fn ids(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["serverChanges"]
        .as_array()
        .expect("serverChanges")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect()
}

/// A change list body for a push.
pub fn changes(changes: Value) -> Value {
    serde_json::json!({ "changes": changes })
}
