//! CPU time per component during a measurement, read from `/proc`, so every result
//! comes with evidence of what was busy: the gateway and projector (threads of this
//! process, told apart by runtime thread name), the bench clients (the rest of this
//! process), nats-server (our child processes), the PostgreSQL cluster (its postmaster
//! and children) and everything else on the machine (other users' builds).

use std::{fs, process::Command, sync::OnceLock, time::Instant};

/// Thread-name prefixes of the runtimes the stack runs on (see `main.rs`).
pub const GATEWAY_THREADS: &str = "gateway";
pub const PROJECTOR_THREADS: &str = "projector";

/// Cumulative CPU seconds per component at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    gateway: f64,
    projector: f64,
    process: f64,
    nats: f64,
    postgres: f64,
    machine_busy: f64,
}

/// CPU used during an interval, in percent of one core (200% = both cores of a
/// two-core machine).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub gateway: f64,
    pub projector: f64,
    pub clients: f64,
    pub nats: f64,
    pub postgres: f64,
    pub other: f64,
    pub machine: f64,
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// `/proc/.../stat` fields after the command name: (name, ppid, own ticks, reaped
/// children's ticks).
fn read_stat(path: &str) -> Option<(String, u32, u64, u64)> {
    let text = fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    // rest[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    let ppid = field(1)? as u32;
    let own = field(11)? + field(12)?;
    let children = field(13)? + field(14)?;
    Some((name, ppid, own, children))
}

fn machine_busy_ticks() -> u64 {
    let Ok(text) = fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| v.get(*i))
        .sum()
}

/// The postmaster of the cluster a backend `pid` belongs to.
pub fn postmaster_of(backend_pid: u32) -> Option<u32> {
    read_stat(&format!("/proc/{backend_pid}/stat")).map(|(_, ppid, _, _)| ppid)
}

pub fn snapshot(postmaster: Option<u32>) -> Snapshot {
    let tck = clock_ticks();
    let me = std::process::id();
    let (mut gateway, mut projector) = (0u64, 0u64);
    if let Ok(tasks) = fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let path = format!("{}/stat", task.path().display());
            if let Some((name, _, own, _)) = read_stat(&path) {
                if name.starts_with(GATEWAY_THREADS) {
                    gateway += own;
                } else if name.starts_with(PROJECTOR_THREADS) {
                    projector += own;
                }
            }
        }
    }
    let process = read_stat("/proc/self/stat").map_or(0, |(_, _, own, _)| own);
    let (mut nats, mut postgres) = (0u64, 0u64);
    if let Some(pm) = postmaster
        && let Some((_, _, own, children)) = read_stat(&format!("/proc/{pm}/stat"))
    {
        // Backends that exited are in the postmaster's reaped-children time.
        postgres += own + children;
    }
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            let name = p.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some((comm, ppid, own, _)) = read_stat(&format!("/proc/{pid}/stat")) else {
                continue;
            };
            if ppid == me && comm.starts_with("nats-server") {
                nats += own;
            } else if postmaster.is_some_and(|pm| ppid == pm) {
                postgres += own;
            }
        }
    }
    let s = |ticks: u64| ticks as f64 / tck;
    Snapshot {
        at: Instant::now(),
        gateway: s(gateway),
        projector: s(projector),
        process: s(process),
        nats: s(nats),
        postgres: s(postgres),
        machine_busy: s(machine_busy_ticks()),
    }
}

impl Snapshot {
    /// CPU used from `self` until `later`.
    pub fn usage_until(&self, later: &Snapshot) -> Usage {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let pct = |a: f64, b: f64| ((b - a).max(0.0) / wall) * 100.0;
        let gateway = pct(self.gateway, later.gateway);
        let projector = pct(self.projector, later.projector);
        let process = pct(self.process, later.process);
        let nats = pct(self.nats, later.nats);
        let postgres = pct(self.postgres, later.postgres);
        let machine = pct(self.machine_busy, later.machine_busy);
        Usage {
            gateway,
            projector,
            clients: (process - gateway - projector).max(0.0),
            nats,
            postgres,
            other: (machine - process - nats - postgres).max(0.0),
            machine,
        }
    }
}
