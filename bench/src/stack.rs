//! One instance of the real stack for a measurement: a fresh nats-server, a fresh
//! database, and the projector and gateway started in this process, each on its own
//! runtime (as in production, where they are separate processes; and so `/proc` can
//! tell their CPU time apart).

use std::time::Duration;

use anyhow::Context as _;
use sync_tests::{RunningGateway, RunningProjector, TestDb, TestNats};
use tokio::{runtime::Handle, time::Instant};

/// The runtimes the stack's services run on.
#[derive(Clone)]
pub struct Runtimes {
    pub gateway: Handle,
    pub projector: Handle,
}

pub struct Stack {
    pub nats: TestNats,
    pub db: TestDb,
    pub base: String,
    projector: Option<RunningProjector>,
    gateway: Option<RunningGateway>,
    rt: Runtimes,
    js: async_nats::jetstream::Context,
    /// The PostgreSQL cluster's postmaster, for CPU accounting.
    pub postmaster: Option<u32>,
}

impl Stack {
    pub async fn start(rt: &Runtimes, postmaster: Option<u32>) -> anyhow::Result<Self> {
        let nats = TestNats::start_with_roles().await;
        let db = TestDb::create().await;
        let projector = start_projector(rt, &nats, &db).await?;
        let gateway = rt
            .gateway
            .spawn(RunningGateway::start(sync_tests::gateway_config(
                &nats, &db,
            )))
            .await
            .context("starting the gateway")?;
        let js = nats.jetstream().await;
        Ok(Self {
            base: gateway.base.clone(),
            nats,
            db,
            projector: Some(projector),
            gateway: Some(gateway),
            rt: rt.clone(),
            js,
            postmaster,
        })
    }

    /// The runtime the projector runs on (so is CPU accounted to it).
    pub fn projector_runtime(&self) -> &Handle {
        &self.rt.projector
    }

    /// Stops the projector (finishing its batch in flight).
    pub async fn stop_projector(&mut self) {
        if let Some(p) = self.projector.take() {
            p.stop().await;
        }
    }

    /// Starts the projector again (it resumes at its checkpoint).
    pub async fn start_projector(&mut self) -> anyhow::Result<()> {
        self.stop_projector().await;
        self.projector = Some(start_projector(&self.rt, &self.nats, &self.db).await?);
        Ok(())
    }

    /// The stream's last sequence.
    pub async fn last_seq(&self) -> anyhow::Result<u64> {
        let mut stream = self
            .js
            .get_stream(schemas::stream::DEFAULT_STREAM)
            .await
            .context("getting the stream")?;
        Ok(stream
            .info()
            .await
            .context("stream info")?
            .state
            .last_sequence)
    }

    /// The projector's committed position: both stages (change log and records).
    pub async fn checkpoint(&self) -> anyhow::Result<u64> {
        let name = schemas::projection::DEFAULT_PROJECTOR;
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT min(last_seq) FROM projector_checkpoints WHERE name = $1 OR name = $2 \
             HAVING count(*) = 2",
        )
        .bind(name)
        .bind(projector::records::checkpoint_name(name))
        .fetch_optional(&self.db.pool)
        .await
        .context("reading the checkpoints")?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// Polls (every `every`) until the checkpoint reaches `target`; returns when it did.
    pub async fn wait_checkpoint(
        &self,
        target: u64,
        every: Duration,
        limit: Duration,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if self.checkpoint().await? >= target {
                return Ok(Instant::now());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the projector did not reach {target} within {limit:?}"
            );
            tokio::time::sleep(every).await;
        }
    }

    /// Creates a shared space (type family) owned by the first of `users`, the others
    /// members, through the gateway's internal API.
    pub async fn create_space(&self, space: &str, users: &[&str]) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let call = |path: String, body: serde_json::Value| {
            http.post(format!("{}{path}", self.base))
                .bearer_auth(sync_tests::SERVICE_KEY)
                .json(&body)
                .send()
        };
        let (owner, members) = users.split_first().context("a space needs an owner")?;
        let body = serde_json::json!({
            "spaceId": space, "type": "family", "name": space, "ownerId": owner,
        });
        call("/internal/spaces".into(), body)
            .await?
            .error_for_status()
            .context("creating the space")?;
        for user in members {
            let body = serde_json::json!({ "userId": user, "role": "member" });
            call(format!("/internal/spaces/{space}/members"), body)
                .await?
                .error_for_status()
                .context("adding a member")?;
        }
        Ok(())
    }

    /// Waits until everything in the log is in PostgreSQL.
    pub async fn wait_idle(&self, limit: Duration) -> anyhow::Result<()> {
        let last = self.last_seq().await?;
        self.wait_checkpoint(last, Duration::from_millis(10), limit)
            .await
            .map(|_| ())
    }

    /// Stops the gateway, then the projector (finishing its batch); the database and
    /// nats-server go when `self` drops.
    pub async fn stop(mut self) {
        drop(self.gateway.take());
        self.stop_projector().await;
    }
}

async fn start_projector(
    rt: &Runtimes,
    nats: &TestNats,
    db: &TestDb,
) -> anyhow::Result<RunningProjector> {
    let config = sync_tests::projector_config(nats, db, schemas::projection::DEFAULT_PROJECTOR);
    rt.projector
        .spawn(RunningProjector::start(config))
        .await
        .context("starting the projector")
}
