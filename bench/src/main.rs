//! Benchmarks of the real stack (nats-server, PostgreSQL, the gateway and projector in
//! release mode): push throughput, end-to-end rate into PostgreSQL and pull latency,
//! each next to a raw baseline measured in the same run. Run it with `scripts/bench`.

/// A progress line on stderr, with the wall-clock time (to line up with server logs).
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[{}] bench: {}", chrono::Local::now().format("%H:%M:%S"), format_args!($($arg)*))
    };
}

mod cpu;
mod e2e;
mod host;
mod pull;
mod push;
mod raw;
mod replay;
mod report;
mod revocation;
mod stack;
mod workload;

use std::{process::Command, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use sqlx::{Connection, PgConnection};
use tokio::runtime::{Builder, Runtime};

use crate::{
    report::{Context, Results},
    stack::{Runtimes, Stack},
};

/// Benchmarks push, end-to-end projection and pull against the real stack.
#[derive(Debug, Parser)]
struct Args {
    /// A short smoke run: one repetition with small counts.
    #[arg(long)]
    quick: bool,
    /// Repetitions of every measurement (the median run is reported) [default: 3, quick: 1].
    #[arg(long)]
    reps: Option<usize>,
    /// Concurrent clients (devices, each its own user) pushing.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Changes per push in the batched measurements.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Pushes per client with batches of one [default: 500, quick: 50].
    #[arg(long)]
    push1_requests: Option<usize>,
    /// Pushes per client with batches of `--batch` [default: 60, quick: 5].
    #[arg(long)]
    push_batch_requests: Option<usize>,
    /// Changes in the end-to-end burst [default: 100000, quick: 8000].
    #[arg(long)]
    e2e_changes: Option<usize>,
    /// Rows of the pulled table [default: 100000, quick: 5000].
    #[arg(long)]
    pull_rows: Option<usize>,
    /// Pulls per repetition [default: 500, quick: 50].
    #[arg(long)]
    pulls: Option<usize>,
    /// Do not send `since` with pushes (older clients); by default each client sends
    /// the `syncedUntil` of its previous response.
    #[arg(long)]
    no_since: bool,
    /// Member removals timed across two gateways [default: 50, quick: 10].
    #[arg(long)]
    revocations: Option<usize>,
    /// Longest any single measurement may run, in seconds.
    #[arg(long, default_value_t = 120)]
    time_limit: u64,
    /// Seed of the random pull positions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

struct Settings {
    reps: usize,
    clients: usize,
    batch: usize,
    push1_requests: usize,
    push_batch_requests: usize,
    e2e_changes: usize,
    pull_rows: usize,
    pulls: usize,
    chain_since: bool,
    revocations: usize,
    limit: Duration,
    seed: u64,
}

impl Args {
    fn settings(&self) -> anyhow::Result<Settings> {
        let pick = |v: Option<usize>, full: usize, quick: usize| {
            v.unwrap_or(if self.quick { quick } else { full })
        };
        let s = Settings {
            reps: pick(self.reps, 3, 1),
            clients: self.clients,
            batch: self.batch,
            push1_requests: pick(self.push1_requests, 500, 50),
            push_batch_requests: pick(self.push_batch_requests, 60, 5),
            e2e_changes: pick(self.e2e_changes, 100_000, 8_000),
            pull_rows: pick(self.pull_rows, 100_000, 5_000),
            pulls: pick(self.pulls, 500, 50),
            chain_since: !self.no_since,
            revocations: pick(self.revocations, 50, 10),
            limit: Duration::from_secs(self.time_limit),
            seed: self.seed,
        };
        anyhow::ensure!(
            s.reps >= 1 && s.clients >= 1 && s.batch >= 1,
            "reps, clients and batch must be at least 1"
        );
        anyhow::ensure!(
            s.pull_rows > 2 * schemas::wire::PAGE_SIZE,
            "--pull-rows must exceed two pages"
        );
        Ok(s)
    }
}

fn runtime(name: &str) -> anyhow::Result<Runtime> {
    Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

/// The allocator: jemalloc. Under load glibc's malloc spent as much CPU as our own
/// code; mimalloc cost the gateway 6–21% and the projector 22–42% more CPU per change
/// than jemalloc (README, "Speed").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = args.settings()?;
    sync_tests::init_logging();
    let gateway = runtime(cpu::GATEWAY_THREADS)?;
    let projector = runtime(cpu::PROJECTOR_THREADS)?;
    let clients = runtime("client")?;
    let rts = Runtimes {
        gateway: gateway.handle().clone(),
        projector: projector.handle().clone(),
    };
    let started = std::time::Instant::now();
    let results = clients.block_on(run(&settings, &rts));
    let revocation = clients.block_on(async {
        progress!(
            "revocation: {} removals across two gateways",
            settings.revocations
        );
        revocation::measure(&rts, settings.revocations, settings.limit).await
    });
    let wall = started.elapsed();
    for rt in [clients, gateway, projector] {
        rt.shutdown_timeout(Duration::from_secs(5));
    }
    let results = results?;
    println!("{}", report::render(&context(&settings), &results, wall));
    println!("{}", revocation::render(&revocation?));
    Ok(())
}

async fn run(s: &Settings, rts: &Runtimes) -> anyhow::Result<Results> {
    let postmaster = postmaster().await;
    let mut r = Results {
        postgres_cpu: postmaster.is_some(),
        ..Results::default()
    };
    for rep in 1..=s.reps {
        let tag = |what: &str| format!("r{rep}-{what}");
        progress!("run {rep}/{}: the host's disk and CPU", s.reps);
        r.disk.push(host::disk_sync().await?);
        r.cpu.push(host::cpu_work().await?);
        progress!("run {rep}/{}: raw JetStream baselines", s.reps);
        let raw_nats = sync_tests::TestNats::start_with_roles().await;
        for (what, requests, batch, mode) in [
            ("b1", s.push1_requests, 1, raw::Mode::Individual),
            ("bn", s.push_batch_requests, s.batch, raw::Mode::Atomic),
            (
                "bn-each",
                s.push_batch_requests,
                s.batch,
                raw::Mode::Individual,
            ),
        ] {
            let devices = workload::devices(&tag(what), s.clients, requests, batch, None)?;
            let events = devices
                .iter()
                .map(workload::raw_events)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let client = raw_nats.connect_as(Some("gateway")).await?;
            let run = raw::publish(client, events, mode, s.limit, postmaster).await?;
            match (batch, mode) {
                (1, _) => r.push1_raw.push(run),
                (_, raw::Mode::Atomic) => r.push_batch_raw.push(run),
                (_, raw::Mode::Individual) => r.push_batch_raw_individual.push(run),
            }
        }
        drop(raw_nats);

        progress!("run {rep}/{}: gateway pushes", s.reps);
        let mut stack = Stack::start(rts, postmaster).await?;
        for (what, requests, batch) in [
            ("b1", s.push1_requests, 1),
            ("bn", s.push_batch_requests, s.batch),
        ] {
            let devices = workload::devices(&tag(what), s.clients, requests, batch, None)?;
            stack.wait_idle(s.limit).await?;
            let run = push::gateway(&stack, devices, s.chain_since, s.limit).await?;
            if batch == 1 {
                r.push1_gateway.push(run);
            } else {
                r.push_batch_gateway.push(run);
            }
        }
        progress!("run {rep}/{}: gateway pushes into one shared space", s.reps);
        // The same pushes of `batch`, every device a member of one shared space: each
        // response carries what the others pushed since the device's previous one.
        let space = format!("{}-shared", tag("space"));
        let devices = workload::devices(
            &tag("shared"),
            s.clients,
            s.push_batch_requests,
            s.batch,
            Some(&space),
        )?;
        let users: Vec<&str> = devices.iter().map(|d| d.user.as_str()).collect();
        stack.create_space(&space, &users).await?;
        stack.wait_idle(s.limit).await?;
        r.push_shared_gateway
            .push(push::gateway(&stack, devices, s.chain_since, s.limit).await?);
        progress!(
            "run {rep}/{}: end-to-end burst of {} changes",
            s.reps,
            s.e2e_changes
        );
        let requests = s.e2e_changes.div_ceil(s.clients * s.batch);
        let devices = workload::devices(&tag("e2e"), s.clients, requests, s.batch, None)?;
        r.e2e
            .push(e2e::measure(&stack, devices, s.chain_since, s.limit).await?);
        progress!(
            "run {rep}/{}: projector draining {} pre-published changes",
            s.reps,
            s.e2e_changes
        );
        let devices = workload::devices(&tag("drain"), s.clients, requests, s.batch, None)?;
        let events = devices
            .iter()
            .map(workload::raw_events)
            .collect::<anyhow::Result<Vec<_>>>()?;
        r.drain.push(e2e::drain(&mut stack, events, s.limit).await?);
        progress!(
            "run {rep}/{}: replaying the whole log into an empty database",
            s.reps
        );
        r.replay.push(replay::measure(&stack, s.limit).await?);
        stack.stop().await;
    }

    progress!("pull: loading {} rows", s.pull_rows);
    let stack = Stack::start(rts, postmaster).await?;
    let data = pull::load(&stack, s.pull_rows, 4, 1000, s.limit).await?;
    for rep in 1..=s.reps {
        progress!("run {rep}/{}: {} pulls", s.reps, s.pulls);
        let run = pull::measure(&stack, &data, s.pulls, s.seed + rep as u64, s.limit).await?;
        r.pull.push(run);
    }
    stack.stop().await;
    Ok(r)
}

/// The PostgreSQL cluster's postmaster (for CPU accounting), through a backend's parent.
/// Without it the report's PostgreSQL column would read 0% (its CPU counted as the rest
/// of the machine's), so a failure is said on stderr and in the report.
async fn postmaster() -> Option<u32> {
    let found = async {
        let url = std::env::var("TEST_DATABASE_URL").context("TEST_DATABASE_URL is not set")?;
        let mut conn = PgConnection::connect(&url).await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        // Read while the backend lives: once the connection closes it exits, and its
        // `/proc` entry goes with it.
        let postmaster = cpu::postmaster_of(pid as u32)
            .with_context(|| format!("/proc/{pid}/stat of the backend is unreadable"));
        let _ = conn.close().await;
        postmaster
    };
    match found.await {
        Ok(pid) => Some(pid),
        Err(e) => {
            progress!("PostgreSQL's postmaster not found ({e:#}): its CPU is not measured");
            None
        }
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn context(s: &Settings) -> Context {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cargo_command = if argv.is_empty() {
        "cargo run --release -p bench".to_owned()
    } else {
        format!("cargo run --release -p bench -- {}", argv.join(" "))
    };
    let command = std::env::var("BENCH_COMMAND").unwrap_or_else(|_| cargo_command.clone());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let nats = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
    let mut environment = vec![format!(
        "Machine: {cores} cores, shared; nats-server {}; PostgreSQL {}",
        command_output(&nats, &["--version"]).unwrap_or_else(|| "?".to_owned()),
        std::env::var("BENCH_PG_SETTINGS").unwrap_or_else(|_| "(settings unknown)".to_owned()),
    )];
    if let Some(commit) = command_output("git", &["rev-parse", "--short", "HEAD"]) {
        let dirty =
            command_output("git", &["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
        environment.push(format!(
            "Commit: {commit}{}",
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ));
    }
    let workload = vec![
        format!(
            "Workload: distinct record inserts (~300 bytes each), {} clients each its own user, \
             writing into their personal spaces (or, in the shared-space measurement, all into one \
             space they are members of); push b=1 {} pushes/client, push b={} {} pushes/client, \
             end-to-end {} changes, \
             pull {} random full pages/run from {} rows; {} run(s); clients {}",
            s.clients,
            s.push1_requests,
            s.batch,
            s.push_batch_requests,
            s.e2e_changes,
            s.pulls,
            s.pull_rows,
            s.reps,
            if s.chain_since {
                "send `since` = previous `syncedUntil`"
            } else {
                "send no `since`"
            }
        ),
        "Gateway and projector run in the bench process in release mode, each on its own \
         multi-threaded tokio runtime; latency is per request, send to last response byte. \
         Every nats-server has the users and permissions of `nats/roles.conf`: the gateway, \
         the projector and the raw baselines' publisher connect as their users."
            .to_owned(),
    ];
    Context {
        command,
        cargo_command,
        environment,
        workload,
        batch: s.batch,
        clients: s.clients,
        pull_rows: s.pull_rows,
    }
}
