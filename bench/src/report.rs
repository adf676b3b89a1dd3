//! The results as markdown: a summary of median runs against the targets, every run,
//! where the CPU went, and any errors.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::{
    cpu::Usage,
    e2e::{DrainRun, E2eRun},
    pull::PullRun,
    push::PushRun,
    replay::ReplayRun,
};

/// Targets the README promises.
pub const TARGET_PUSH_100: f64 = 20_000.0;
pub const TARGET_E2E: f64 = 15_000.0;
pub const TARGET_PULL_P99_MS: f64 = 20.0;

#[derive(Default)]
pub struct Results {
    pub push1_gateway: Vec<PushRun>,
    pub push1_raw: Vec<PushRun>,
    pub push_batch_gateway: Vec<PushRun>,
    /// The same pushes, every device a member of one shared space.
    pub push_shared_gateway: Vec<PushRun>,
    pub push_batch_raw: Vec<PushRun>,
    pub push_batch_raw_individual: Vec<PushRun>,
    pub e2e: Vec<E2eRun>,
    pub drain: Vec<DrainRun>,
    pub replay: Vec<ReplayRun>,
    pub pull: Vec<PullRun>,
    /// Durable 4 KiB writes where the nats-servers keep their stores (µs), measured
    /// before each run's raw baselines.
    pub disk: Vec<Histogram<u64>>,
    /// A fixed piece of single-threaded work timed (µs), measured beside `disk`.
    pub cpu: Vec<Histogram<u64>>,
    /// PostgreSQL's CPU was measured (its postmaster was found).
    pub postgres_cpu: bool,
}

/// What was run, for the header of the report.
pub struct Context {
    pub command: String,
    pub cargo_command: String,
    pub environment: Vec<String>,
    pub workload: Vec<String>,
    pub batch: usize,
    pub clients: usize,
    pub pull_rows: usize,
}

/// The median run by `key` (the lower one of an even count).
fn median<T>(runs: &[T], key: impl Fn(&T) -> f64) -> Option<&T> {
    let mut sorted: Vec<&T> = runs.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted.get(runs.len().saturating_sub(1) / 2).copied()
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn push_cell(r: &PushRun) -> String {
    let mut s = format!(
        "{} changes/s (p50 {:.2} ms, p99 {:.2} ms)",
        thousands(r.rate()),
        ms(&r.latency, 0.5),
        ms(&r.latency, 0.99)
    );
    if r.error_count() > 0 {
        let _ = write!(s, " **{} errors**", r.error_count());
    }
    if !r.complete {
        s.push_str(" *(time limit hit)*");
    }
    s
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "—".to_owned()
    }
}

fn meets(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

/// A row of the CPU table; `rate` (changes/s) adds what a change cost the stack
/// (gateway, projector, nats-server, PostgreSQL), in µs of CPU: comparable across runs
/// and days, where a rate alone also follows the host's speed.
fn cpu_row(out: &mut String, name: &str, c: &Usage, rate: Option<f64>) {
    let per_change = match rate {
        Some(rate) if rate > 0.0 => {
            let stack = c.gateway + c.projector + c.nats + c.postgres;
            format!("{:.0} µs", stack * 10_000.0 / rate)
        }
        _ => "—".to_owned(),
    };
    let _ = writeln!(
        out,
        "| {name} | {:.0}% | {:.0}% | {:.0}% | {:.0}% | {:.0}% | {:.0}% | {:.0}% | {per_change} |",
        c.gateway, c.projector, c.clients, c.nats, c.postgres, c.other, c.machine
    );
}

pub fn render(ctx: &Context, r: &Results, wall: std::time::Duration) -> String {
    let mut out = String::new();
    let n = r.e2e.len().max(r.pull.len());
    let _ = writeln!(out, "## Benchmark results\n");
    let _ = writeln!(out, "Command: `{}`  ", ctx.command);
    let _ = writeln!(out, "Binary: `{}`  ", ctx.cargo_command);
    for line in ctx.environment.iter().chain(&ctx.workload) {
        let _ = writeln!(out, "{line}  ");
    }
    let _ = writeln!(
        out,
        "Wall time of the whole run: {:.0} s\n",
        wall.as_secs_f64()
    );

    let _ = writeln!(
        out,
        "Median run of {n} (gateway and raw baseline measured alternately in the same run).\n"
    );
    let _ = writeln!(
        out,
        "| Measurement | Gateway | Raw baseline | Gateway / raw | Target | Meets |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let (c, b) = (ctx.clients, ctx.batch);
    for (label, gw, raw, how, target) in [
        (
            format!("Push, batch of 1, {c} clients"),
            &r.push1_gateway,
            &r.push1_raw,
            "publish + ack",
            None,
        ),
        (
            format!("Push, batch of {b}, {c} clients"),
            &r.push_batch_gateway,
            &r.push_batch_raw,
            "atomic batch + commit ack, as the gateway",
            Some(TARGET_PUSH_100),
        ),
        (
            format!(
                "Push, batch of {b}, {c} clients, all members of one shared space (each \
                 response carries the others' changes since the client's previous one)"
            ),
            &r.push_shared_gateway,
            &r.push_batch_raw,
            "atomic batch + commit ack, as the gateway",
            None,
        ),
    ] {
        let (Some(g), Some(w)) = (median(gw, PushRun::rate), median(raw, PushRun::rate)) else {
            continue;
        };
        let (target, ok) = match target {
            Some(t) => (
                format!("≥ {} changes/s", thousands(t)),
                meets(g.rate() >= t),
            ),
            None => ("—".to_owned(), "—"),
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} (JetStream {how}) | {} | {target} | {ok} |",
            push_cell(g),
            push_cell(w),
            ratio(g.rate(), w.rate()),
        );
    }
    if let Some(e) = median(&r.e2e, E2eRun::rate) {
        let (raw, raw_rate) = match median(&r.drain, DrainRun::rate) {
            Some(d) => (
                format!(
                    "{} changes/s (projector alone draining {} pre-published changes)",
                    thousands(d.rate()),
                    thousands(d.events as f64)
                ),
                d.rate(),
            ),
            None => ("—".to_owned(), 0.0),
        };
        let _ = writeln!(
            out,
            "| End-to-end into PostgreSQL, {} changes, batch of {b}, {c} clients | {} changes/s ({:.1} s; last checkpoint {:.0} ms after the last push answer) | {raw} | {} | ≥ {} changes/s | {} |",
            thousands(e.push.changes as f64),
            thousands(e.rate()),
            e.total.as_secs_f64(),
            e.drain.as_secs_f64() * 1000.0,
            ratio(e.rate(), raw_rate),
            thousands(TARGET_E2E),
            meets(e.rate() >= TARGET_E2E),
        );
    }
    if let (Some(p), Some(d)) = (
        median(&r.replay, ReplayRun::rate),
        median(&r.drain, DrainRun::rate),
    ) {
        let _ = writeln!(
            out,
            "| Replay: the run's whole log ({} positions) rebuilt into an empty database; checksum equal to the live projection's | {} positions/s ({:.1} s) | {} changes/s (projector alone draining, as above) | {} | equal checksums | yes |",
            thousands(p.events as f64),
            thousands(p.rate()),
            p.elapsed.as_secs_f64(),
            thousands(d.rate()),
            ratio(p.rate(), d.rate()),
        );
    }
    let g = median(&r.pull, |p| ms(&p.gateway, 0.99));
    let w = median(&r.pull, |p| ms(&p.raw, 0.99));
    if let (Some(g), Some(w)) = (g, w) {
        let _ = writeln!(
            out,
            "| Pull, full 1000-row page of a {}-row table, 1 client | p50 {:.2} ms, p99 {:.2} ms | p50 {:.2} ms, p99 {:.2} ms (same SQL via sqlx) | p50 {}, p99 {} | p99 ≤ {TARGET_PULL_P99_MS} ms | {} |",
            thousands(ctx.pull_rows as f64),
            ms(&g.gateway, 0.5),
            ms(&g.gateway, 0.99),
            ms(&w.raw, 0.5),
            ms(&w.raw, 0.99),
            ratio(ms(&g.gateway, 0.5), ms(&w.raw, 0.5)),
            ratio(ms(&g.gateway, 0.99), ms(&w.raw, 0.99)),
            meets(ms(&g.gateway, 0.99) <= TARGET_PULL_P99_MS),
        );
    }

    let _ = writeln!(out, "\n### Every run\n");
    let header: Vec<String> = (1..=n).map(|i| format!("Run {i}")).collect();
    let _ = writeln!(out, "| Measurement | {} |", header.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(n));
    let row = |out: &mut String, label: &str, cells: Vec<String>| {
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    };
    row(
        &mut out,
        "Push b=1, gateway",
        r.push1_gateway.iter().map(push_cell).collect(),
    );
    row(
        &mut out,
        "Push b=1, raw JetStream",
        r.push1_raw.iter().map(push_cell).collect(),
    );
    row(
        &mut out,
        &format!("Push b={b}, gateway"),
        r.push_batch_gateway.iter().map(push_cell).collect(),
    );
    row(
        &mut out,
        &format!("Push b={b}, gateway, one shared space"),
        r.push_shared_gateway.iter().map(push_cell).collect(),
    );
    row(
        &mut out,
        &format!("Push b={b}, raw JetStream atomic batch"),
        r.push_batch_raw.iter().map(push_cell).collect(),
    );
    row(
        &mut out,
        &format!("Push b={b}, raw JetStream, one ack per message"),
        r.push_batch_raw_individual.iter().map(push_cell).collect(),
    );
    row(
        &mut out,
        "Disk: 4 KiB write + fdatasync where nats-server stores (nats-server 2.15 waits on five per atomic batch), p50 / p99",
        r.disk
            .iter()
            .map(|d| format!("{:.2} / {:.2} ms", ms(d, 0.5), ms(d, 0.99)))
            .collect(),
    );
    row(
        &mut out,
        &format!(
            "CPU: a push body of {} changes parsed and serialized again, one thread (the same work in every run: a slower host takes longer), p50",
            crate::host::CPU_CHANGES
        ),
        r.cpu
            .iter()
            .map(|c| format!("{:.0} µs", c.value_at_quantile(0.5)))
            .collect(),
    );
    row(
        &mut out,
        "End-to-end into PostgreSQL",
        r.e2e
            .iter()
            .map(|e| {
                format!(
                    "{} changes/s (pushes {} changes/s, drain {:.0} ms)",
                    thousands(e.rate()),
                    thousands(e.push.rate()),
                    e.drain.as_secs_f64() * 1000.0
                )
            })
            .collect(),
    );
    row(
        &mut out,
        "Projector alone, draining a pre-filled stream",
        r.drain
            .iter()
            .map(|d| format!("{} changes/s", thousands(d.rate())))
            .collect(),
    );
    row(
        &mut out,
        "Replay of the whole log into an empty database (checksum equal)",
        r.replay
            .iter()
            .map(|p| {
                format!(
                    "{} positions/s ({} in {:.1} s)",
                    thousands(p.rate()),
                    thousands(p.events as f64),
                    p.elapsed.as_secs_f64()
                )
            })
            .collect(),
    );
    row(
        &mut out,
        "Pull via gateway, p50 / p99",
        r.pull
            .iter()
            .map(|p| {
                format!(
                    "{:.2} / {:.2} ms (max {:.2})",
                    ms(&p.gateway, 0.5),
                    ms(&p.gateway, 0.99),
                    p.gateway.max() as f64 / 1000.0
                )
            })
            .collect(),
    );
    row(
        &mut out,
        "Pull via gateway, compressed: zstd / gzip, p50 / p99 (page size; plain)",
        r.pull
            .iter()
            .map(|p| {
                let kb = |bytes: u64, pages: &Histogram<u64>| {
                    bytes as f64 / pages.len().max(1) as f64 / 1000.0
                };
                format!(
                    "zstd {:.2} / {:.2} ms ({:.0} kB); gzip {:.2} / {:.2} ms ({:.0} kB); plain {:.0} kB",
                    ms(&p.zstd, 0.5),
                    ms(&p.zstd, 0.99),
                    kb(p.bytes.zstd, &p.zstd),
                    ms(&p.gzip, 0.5),
                    ms(&p.gzip, 0.99),
                    kb(p.bytes.gzip, &p.gzip),
                    kb(p.bytes.plain, &p.gateway),
                )
            })
            .collect(),
    );
    row(
        &mut out,
        "Pull SQL via sqlx, p50 / p99",
        r.pull
            .iter()
            .map(|p| {
                format!(
                    "{:.2} / {:.2} ms (max {:.2})",
                    ms(&p.raw, 0.5),
                    ms(&p.raw, 0.99),
                    p.raw.max() as f64 / 1000.0
                )
            })
            .collect(),
    );

    row(
        &mut out,
        "Pull SQL via sqlx under row-level security, p50 / p99",
        r.pull
            .iter()
            .map(|p| {
                format!(
                    "{:.2} / {:.2} ms (max {:.2}; p50 {:+.0}% over the same SQL without it, \
                     {:+.1}% of the gateway's pull p50)",
                    ms(&p.rls, 0.5),
                    ms(&p.rls, 0.99),
                    p.rls.max() as f64 / 1000.0,
                    (ms(&p.rls, 0.5) / ms(&p.raw, 0.5) - 1.0) * 100.0,
                    (ms(&p.rls, 0.5) - ms(&p.raw, 0.5)) / ms(&p.gateway, 0.5) * 100.0
                )
            })
            .collect(),
    );

    let _ = writeln!(
        out,
        "\n### Where the CPU went (median run; % of one core, {} cores available)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        out,
        "| Measurement | gateway | projector | bench clients | nats-server | PostgreSQL | rest of machine | machine total | CPU per change (the stack) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    if let Some(x) = median(&r.push1_gateway, PushRun::rate) {
        cpu_row(&mut out, "Push b=1, gateway", &x.cpu, Some(x.rate()));
    }
    if let Some(x) = median(&r.push1_raw, PushRun::rate) {
        cpu_row(&mut out, "Push b=1, raw JetStream", &x.cpu, Some(x.rate()));
    }
    if let Some(x) = median(&r.push_batch_gateway, PushRun::rate) {
        cpu_row(
            &mut out,
            &format!("Push b={b}, gateway"),
            &x.cpu,
            Some(x.rate()),
        );
    }
    if let Some(x) = median(&r.push_shared_gateway, PushRun::rate) {
        cpu_row(
            &mut out,
            &format!("Push b={b}, gateway, one shared space"),
            &x.cpu,
            Some(x.rate()),
        );
    }
    if let Some(x) = median(&r.push_batch_raw, PushRun::rate) {
        cpu_row(
            &mut out,
            &format!("Push b={b}, raw JetStream atomic batch"),
            &x.cpu,
            Some(x.rate()),
        );
    }
    if let Some(x) = median(&r.push_batch_raw_individual, PushRun::rate) {
        cpu_row(
            &mut out,
            &format!("Push b={b}, raw JetStream, one ack per message"),
            &x.cpu,
            Some(x.rate()),
        );
    }
    if let Some(x) = median(&r.e2e, E2eRun::rate) {
        cpu_row(&mut out, "End-to-end", &x.cpu, Some(x.rate()));
    }
    if let Some(x) = median(&r.drain, DrainRun::rate) {
        cpu_row(
            &mut out,
            "Projector alone, draining",
            &x.cpu,
            Some(x.rate()),
        );
    }
    if let Some(x) = median(&r.pull, |p| ms(&p.gateway, 0.99)) {
        cpu_row(&mut out, "Pull (gateway and SQL alternating)", &x.cpu, None);
    }
    let _ = writeln!(
        out,
        "\ngateway and projector: threads of their runtimes in the bench process; bench clients: \
         the rest of it (HTTP clients, the raw baselines' async-nats publisher and sqlx client); \
         PostgreSQL: the whole cluster; rest of machine: everything else (e.g. other builds); \
         CPU per change: gateway, projector, nats-server and PostgreSQL together, per change \
         of the row's rate (for a raw baseline, nats-server's alone)."
    );
    if !r.postgres_cpu {
        let _ = writeln!(
            out,
            "\n**PostgreSQL's CPU was not measured** in this run (its postmaster was not found, \
             see stderr): its column reads 0%, its CPU is in \"rest of machine\", and the CPU \
             per change leaves it out."
        );
    }

    let mut problems = Vec::new();
    for (label, runs) in [
        ("push b=1 gateway", &r.push1_gateway),
        ("push b=1 raw", &r.push1_raw),
        ("push batch gateway", &r.push_batch_gateway),
        ("push batch gateway, shared space", &r.push_shared_gateway),
        ("push batch raw atomic", &r.push_batch_raw),
        ("push batch raw individual", &r.push_batch_raw_individual),
    ] {
        for (i, run) in runs.iter().enumerate() {
            if run.error_count() > 0 {
                problems.push(format!(
                    "{label}, run {}: {:?}; first: {}",
                    i + 1,
                    run.errors,
                    run.first_error.as_deref().unwrap_or("")
                ));
            }
        }
    }
    for (i, e) in r.e2e.iter().enumerate() {
        if e.push.error_count() > 0 {
            problems.push(format!(
                "end-to-end, run {}: {:?}; first: {}",
                i + 1,
                e.push.errors,
                e.push.first_error.as_deref().unwrap_or("")
            ));
        }
    }
    for (i, p) in r.pull.iter().enumerate() {
        if !p.errors.is_empty() || p.short_pages > 0 || !p.complete {
            problems.push(format!(
                "pull, run {}: errors {:?}, pages not full: {}, complete: {}; first: {}",
                i + 1,
                p.errors,
                p.short_pages,
                p.complete,
                p.first_error.as_deref().unwrap_or("")
            ));
        }
    }
    let _ = writeln!(out, "\n### Errors\n");
    if problems.is_empty() {
        let _ = writeln!(
            out,
            "None: every request succeeded and every page was full."
        );
    } else {
        for p in problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}
