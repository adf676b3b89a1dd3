//! Concurrent pushes through the gateway (`POST /sync/{app}`), and what every push
//! measurement shares with the raw baseline (`raw.rs`): starting devices together and
//! merging what they measured.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::{sync::Barrier, time::Instant};

use crate::{
    cpu::{self, Snapshot, Usage},
    stack::Stack,
    workload::{self, APP, Device},
};

/// Latency histogram in microseconds, up to ten minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What one measurement of concurrent pushes produced.
pub struct PushRun {
    /// Changes acknowledged (200 for the gateway, all acks for raw).
    pub changes: u64,
    pub requests: u64,
    /// Failures by kind (HTTP status or "transport"), and one example message.
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub latency: Histogram<u64>,
    /// From the first request sent to the last answered.
    pub started: Instant,
    pub wall: Duration,
    /// False when the time limit cut the measurement short.
    pub complete: bool,
    pub cpu_before: Snapshot,
    pub cpu: Usage,
}

impl PushRun {
    pub fn rate(&self) -> f64 {
        self.changes as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Starts every device at once, after all of them are ready (connected, warmed up)
/// and the CPU counters are read.
pub struct Gate {
    ready: Barrier,
    go: Barrier,
}

impl Gate {
    pub fn new(devices: usize) -> Arc<Self> {
        Arc::new(Self {
            ready: Barrier::new(devices + 1),
            go: Barrier::new(devices + 1),
        })
    }

    /// Waits until every device is ready and the measurement starts.
    pub async fn pass(&self) {
        self.ready.wait().await;
        self.go.wait().await;
    }
}

/// One device's share of a measurement.
pub struct Outcome {
    changes: u64,
    requests: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    latency: Histogram<u64>,
    pub started: Instant,
    pub finished: Instant,
    pub complete: bool,
}

impl Outcome {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            changes: 0,
            requests: 0,
            errors: BTreeMap::new(),
            first_error: None,
            latency: histogram(),
            started: now,
            finished: now,
            complete: true,
        }
    }

    pub fn ok(&mut self, elapsed: Duration, changes: usize) {
        self.requests += 1;
        self.changes += changes as u64;
        self.latency.saturating_record(elapsed.as_micros() as u64);
    }

    pub fn failed(&mut self, kind: &str, message: String) {
        self.requests += 1;
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        self.first_error.get_or_insert(message);
    }
}

pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build()?)
}

/// Pushes every device's batches through the gateway, devices concurrently, each
/// sending its next batch when the previous one is answered. With `chain_since` a
/// device sends the `syncedUntil` of its previous response as `since`, as clients do;
/// otherwise it sends no `since` at all.
pub async fn gateway(
    stack: &Stack,
    devices: Vec<Device>,
    chain_since: bool,
    limit: Duration,
) -> anyhow::Result<PushRun> {
    let gate = Gate::new(devices.len());
    let url = format!("{}/sync/{APP}", stack.base);
    let mut tasks = Vec::new();
    for device in devices {
        let (gate, url) = (gate.clone(), url.clone());
        let http = http_client()?;
        tasks.push(tokio::spawn(async move {
            gateway_device(http, url, device, chain_since, gate, limit).await
        }));
    }
    collect(tasks, gate, stack.postmaster).await
}

async fn gateway_device(
    http: reqwest::Client,
    url: String,
    device: Device,
    chain_since: bool,
    gate: Arc<Gate>,
    limit: Duration,
) -> Outcome {
    let send = |body: Bytes| {
        http.post(&url)
            .bearer_auth(&device.token)
            .header("x-client-id", &device.client_id)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Opens the connection (an empty push publishes nothing).
    let _ = send(Bytes::from_static(b"{\"changes\":[]}")).await;
    let prebuilt: Vec<Bytes> = if chain_since {
        Vec::new()
    } else {
        let batches = device.batches.iter();
        batches.map(|b| workload::body(None, b)).collect()
    };
    let mut out = Outcome::new();
    gate.pass().await;
    out.started = Instant::now();
    let deadline = out.started + limit;
    let mut since: Option<String> = None;
    for (i, changes) in device.batches.iter().enumerate() {
        if Instant::now() >= deadline {
            out.complete = false;
            break;
        }
        let body = match prebuilt.get(i) {
            Some(body) => body.clone(),
            None => workload::body(since.as_deref(), changes),
        };
        let (elapsed, reply) = workload::timed_request(send(body)).await;
        match reply {
            Ok((status, bytes)) if status.is_success() => {
                out.ok(elapsed, device.per_batch);
                // Only the cursor is read (the changes are skipped, not built).
                since = serde_json::from_slice::<Answered>(&bytes)
                    .ok()
                    .and_then(|a| a.synced_until);
            }
            Ok((status, bytes)) => out.failed(
                status.as_str(),
                format!("{status}: {}", String::from_utf8_lossy(&bytes)),
            ),
            Err(e) => out.failed("transport", e.to_string()),
        }
    }
    out.finished = Instant::now();
    out
}

/// What a device reads of a push response.
#[derive(serde::Deserialize)]
struct Answered {
    #[serde(rename = "syncedUntil")]
    synced_until: Option<String>,
}

/// Releases the devices together and merges what they measured.
pub async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
    gate: Arc<Gate>,
    postmaster: Option<u32>,
) -> anyhow::Result<PushRun> {
    gate.ready.wait().await;
    let cpu_before = cpu::snapshot(postmaster);
    gate.go.wait().await;
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await?);
    }
    let cpu = cpu_before.usage_until(&cpu::snapshot(postmaster));
    let started = outcomes.iter().map(|o| o.started).min();
    let finished = outcomes.iter().map(|o| o.finished).max();
    let (Some(started), Some(finished)) = (started, finished) else {
        anyhow::bail!("no devices");
    };
    let mut run = PushRun {
        changes: 0,
        requests: 0,
        errors: BTreeMap::new(),
        first_error: None,
        latency: histogram(),
        started,
        wall: finished.duration_since(started),
        complete: true,
        cpu_before,
        cpu,
    };
    for o in outcomes {
        run.changes += o.changes;
        run.requests += o.requests;
        for (k, v) in o.errors {
            *run.errors.entry(k).or_default() += v;
        }
        if run.first_error.is_none() {
            run.first_error = o.first_error;
        }
        run.latency.add(&o.latency)?;
        run.complete &= o.complete;
    }
    Ok(run)
}
