//! The command line: `suite` or one scenario, with the options every scenario shares, and
//! their resolution into [`Settings`] (where `--quick` picks smaller defaults).
//!
//! Every explicit flag wins over `--quick`: `--quick --trials 3` runs three short trials.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Side-by-side benchmarks of Event Catcher (`ec`) against NATS JetStream and Redis Streams.
///
/// Every server runs as a child process with a fresh temp dir on free 127.0.0.1 ports.
/// Binaries: ec-node and ec-gateway beside this executable (or --bin-dir / EC_BENCH_BIN_DIR);
/// nats-server and redis-server from EC_BENCH_NATS_SERVER / EC_BENCH_REDIS_SERVER or PATH;
/// consul from EC_CONSUL_BIN, <workspace>/.tools/consul or PATH. A missing peer prints
/// `SKIPPED <peer>` and the rest runs.
#[derive(Debug, Parser)]
#[command(name = "ec-bench", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Every scenario, trials interleaving the systems, then the table.
    Suite(RunArgs),
    /// The machine's floor: TCP loopback round trip (placed by the scheduler, and pinned to
    /// two CPUs: the cost of waking another CPU) and throughput, fsync latency, and how
    /// often and how long a sleeping thread is held up past its wake-up (on the machines of
    /// BENCHMARKS.md, by another process's higher-priority thread).
    Floor(RunArgs),
    /// Publish N events through a window of in-flight events.
    Publish(RunArgs),
    /// Publish N events (not reported), then replay them from offset 0.
    Replay(RunArgs),
    /// End-to-end latency at a fixed rate, and time to first event when resuming at N/2.
    E2e(RunArgs),
    /// Route lookups: the SDK's route cache, GetNodeForData from the gateway's table, two
    /// Consul calls per lookup (the seed's way), and an empty unary RPC (the floor), served
    /// both by tonic's default server and the way the gateway serves.
    Lookup(RunArgs),
    /// Streaming through the gateway versus directly from the node: replay throughput, the
    /// CPU the node, the gateway and the reader each spend per replayed event, and e2e
    /// latency.
    Proxy(RunArgs),
    /// SIGKILL a node mid-stream: the serving replica (reader pause), and the write leader,
    /// SIGKILLed and SIGSTOPped, beside a 3-server JetStream cluster (write and read pause).
    ///
    /// `--kill replica` (also what `suite` runs): two replicating nodes with a 1 s check
    /// interval; the replica serving a reader is SIGKILLed; the reader's pause and offsets.
    ///
    /// `--kill primary` (`suite` runs it for ours only): the write leader is sent each
    /// `--signal` (SIGKILL; SIGSTOP: frozen, sockets open) while a producer publishes
    /// `--publish-rate` batches/s of `--events-per-batch` events (one batch in flight, each
    /// failed publish retried by the bench loop every 10 ms with the same payloads) and readers
    /// follow from offset 0. Ours: three replicating ec-nodes (mapping node1,node2,node3), a
    /// gateway and a Consul dev agent, all at DEFAULT settings except ports and data dirs
    /// (health-check interval 10 s, gateway.failover_after, fsync always, acks all: what a new
    /// user gets); the producer uses the SDK's Client::publish, one reader the SDK's stream
    /// (redirect) and one the gateway's Subscribe (proxy), both served by the primary, node1,
    /// which is killed. JetStream (`jetstream`
    /// in --systems, nats-server found as for the other scenarios, else SKIPPED): three
    /// nats-servers clustered on loopback, an R3 file stream, default server settings,
    /// Nats-Msg-Id per event, an ordered consumer; the stream leader (stream info
    /// cluster.leader) is killed. Measured: write pause (kill → first acknowledgement of a
    /// publish attempt started after the kill), read pause (kill → the reader reads from an
    /// in-sync replica, as its client says; ours only), the first new event a reader gets,
    /// the longest gaps between acknowledgements and between deliveries, and whether the
    /// final log holds every acknowledged event exactly once and each reader saw gapless
    /// offsets. Records: scenarios `primary-kill` (SIGKILL) and `primary-stop` (SIGSTOP).
    Failover(FailoverArgs),
    /// Failover times in the multi-machine deployment shape (not part of `suite`).
    ///
    /// 3 Consul servers, a Consul client agent per
    /// machine (Consul's own gossip timings), a replicating ec-node registered with each of
    /// three machines' agents, the gateway on a fourth; every ec process at default settings.
    /// Faults: `node` (the primary's process SIGKILLed), `machine` (the primary's agent and
    /// node SIGKILLed), `server` (a Consul follower SIGKILLed), `leader` (the Consul leader
    /// SIGKILLed, then started again). A producer publishes through the SDK (redirect mode)
    /// every 5 ms and a reader follows; measured: kill → first acknowledgement and first
    /// delivery after the kill, Serf's failure detection (machine), Consul's re-election and
    /// the first committed KV write after the kill (server, leader). Prints each trial and the
    /// medians.
    Deployment(DeploymentArgs),
    /// One gateway with many mappings: memory, update latency, watch cost, lookups.
    ///
    /// One gateway with many mappings over 3 nodes (Consul dev agent): its RSS growth, the
    /// time from a mapping write to the gateway routing it, the gateway's CPU per mapping
    /// change, the size of the KV listing every change makes each gateway read, and lookup
    /// throughput; for each of --mappings.
    Scale(ScaleArgs),
    /// How cost grows: throughput, CPU, latency and memory against data IDs, followers, event
    /// size and log size, ours beside the peers (not part of `suite`).
    ///
    /// Tier A only (acknowledged after the write, fsync within 1 s), a fresh server per
    /// system, point and trial; systems interleave within each point. Curves (`--curves`):
    /// `ids`: publish throughput and server CPU per event against the number of data IDs
    /// written at once (`--ids`; ours: a stream per ID on one node, one SDK publisher per ID,
    /// one connection per 1,000 IDs (the node's default limit is 1,024 streams per
    /// connection); Redis: a stream key per ID on one connection; JetStream: a subject
    /// per ID in one stream), batches of 16 taking turns over the IDs, 1,024 events in flight.
    /// `followers`: e2e delivery p50/p99 over all followers of one data ID (`--followers`,
    /// each its own connection) at `--follower-rate` events/s. `size`: publish events/s and
    /// MB/s against event size (`--sizes`), with at most 16 MiB and 256 events in flight and
    /// ≤ 1 MiB per batch. `memory`: server RSS per data ID (`--memory-ids` streams with one
    /// event each, minus the empty server) and per follower (`--memory-followers` attached,
    /// minus none). `replay`: replay from 0 against log size (`--log-sizes`, 100 B events
    /// preloaded at full speed). Records: scenarios `growth-<curve>`, the point in
    /// `params.x`; `scripts/plot-growth.py` draws them.
    Growth(GrowthArgs),
    /// Print the table of a JSON-lines file written with --out (e.g. of an interrupted run).
    Table {
        /// The file.
        file: PathBuf,
    },
    /// (internal) The seed's GetNodeForData: two Consul HTTP calls per request.
    #[command(hide = true)]
    SeedGateway(SeedGatewayArgs),
    /// (internal) An empty unary RPC: the floor of the lookup scenario.
    #[command(hide = true)]
    FloorServer(FloorServerArgs),
}

impl Command {
    /// The scenario's name as printed and recorded.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Command::Suite(_) => "suite",
            Command::Floor(_) => "floor",
            Command::Publish(_) => "publish",
            Command::Replay(_) => "replay",
            Command::E2e(_) => "e2e",
            Command::Lookup(_) => "lookup",
            Command::Proxy(_) => "proxy",
            Command::Failover(_) => "failover",
            Command::Deployment(_) => "deployment",
            Command::Scale(_) => "scale",
            Command::Growth(_) => "growth",
            Command::Table { .. } => "table",
            Command::SeedGateway(_) => "seed-gateway",
            Command::FloorServer(_) => "floor-server",
        }
    }
}

/// Flags of the internal seed gateway.
#[derive(Debug, Args)]
pub(crate) struct SeedGatewayArgs {
    /// Port to serve gRPC on (127.0.0.1).
    #[arg(long)]
    pub(crate) port: u16,
    /// Consul's HTTP address, HOST:PORT.
    #[arg(long)]
    pub(crate) consul_addr: String,
    /// KV prefix of the mappings.
    #[arg(long, default_value = ec_discovery::DEFAULT_KV_PREFIX)]
    pub(crate) kv_prefix: String,
}

/// Flags of the internal floor server.
#[derive(Debug, Args)]
pub(crate) struct FloorServerArgs {
    /// Port to serve gRPC on (127.0.0.1).
    #[arg(long)]
    pub(crate) port: u16,
    /// Serve the way `ec-gateway` does (ec-grpc: one thread per core, each holding its
    /// connections whole) instead of with tonic's default server on a default runtime.
    #[arg(long)]
    pub(crate) per_thread: bool,
    /// With --per-thread: microseconds each thread polls its sockets after its last work
    /// before it sleeps, as the gateway's do (gateway.idle_poll); 0 = sleep at once.
    #[arg(long, default_value_t = 0)]
    pub(crate) idle_poll_us: u64,
}

/// Flags of `failover`.
#[derive(Debug, Clone, Args)]
pub(crate) struct FailoverArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// What to take out, comma-separated: replica, primary.
    #[arg(long, value_delimiter = ',', default_value = "replica,primary")]
    pub(crate) kill: Vec<KillTarget>,
    /// How the primary is taken out, comma-separated: kill (SIGKILL), stop (SIGSTOP).
    #[arg(long, value_delimiter = ',', default_value = "kill,stop")]
    pub(crate) signal: Vec<Signal>,
    /// Batches per second the producer aims at with --kill primary.
    #[arg(long, default_value_t = 400)]
    pub(crate) publish_rate: u32,
    /// Events per batch with --kill primary.
    #[arg(long, default_value_t = 4)]
    pub(crate) events_per_batch: usize,
    /// Seconds of steady load before the kill (default 3; 1 with --quick).
    #[arg(long)]
    pub(crate) before_secs: Option<f64>,
    /// Seconds of load kept up after writes resumed (default 2; 1 with --quick).
    #[arg(long)]
    pub(crate) after_secs: Option<f64>,
    /// Longest wait for writes and reads to resume after the kill, seconds (a JetStream
    /// ordered consumer whose server died resumes only after missing two idle heartbeats).
    #[arg(long, default_value_t = 120.0)]
    pub(crate) resume_deadline: f64,
}

/// How `failover --kill primary` takes the primary out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Signal {
    /// SIGKILL: gone, connections reset.
    Kill,
    /// SIGSTOP: frozen, connections open, nothing answers.
    Stop,
}

impl Signal {
    /// The fault it stands for.
    pub(crate) fn fault(self) -> crate::primary_kill::Fault {
        match self {
            Signal::Kill => crate::primary_kill::Fault::Kill,
            Signal::Stop => crate::primary_kill::Fault::Stop,
        }
    }
}

/// Flags of `deployment`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DeploymentArgs {
    /// Faults to inject, comma-separated, each in its own fresh deployment per trial.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "node,machine,server,leader"
    )]
    pub(crate) faults: Vec<crate::deployment::Fault>,
    /// Trials per fault.
    #[arg(long, default_value_t = 5)]
    pub(crate) trials: usize,
    /// Where ec-node and ec-gateway are (default: beside this executable).
    #[arg(long, env = "EC_BENCH_BIN_DIR", value_name = "DIR")]
    pub(crate) bin_dir: Option<PathBuf>,
}

/// Flags of `scale`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ScaleArgs {
    /// Mapping counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub(crate) mappings: Vec<usize>,
    /// Mapping writes timed per count (write → routable).
    #[arg(long, default_value_t = 20)]
    pub(crate) updates: usize,
    /// Seconds of lookups per count.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) lookup_secs: f64,
    /// Concurrent GetNodeForData callers.
    #[arg(long, default_value_t = 32)]
    pub(crate) lookup_callers: usize,
    /// Where ec-gateway is (default: beside this executable).
    #[arg(long, env = "EC_BENCH_BIN_DIR", value_name = "DIR")]
    pub(crate) bin_dir: Option<PathBuf>,
}

/// A curve of `growth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub(crate) enum Curve {
    /// Data IDs created a second, then publish throughput and server CPU per event,
    /// against data IDs written at once.
    Ids,
    /// End-to-end delivery latency against the followers of one data ID.
    Followers,
    /// Publish throughput against event size.
    Size,
    /// Server memory per data ID and per follower.
    Memory,
    /// Replay throughput against log size.
    Replay,
}

impl Curve {
    /// Every curve, in the order they run.
    pub(crate) const ALL: [Curve; 5] = [
        Curve::Ids,
        Curve::Followers,
        Curve::Size,
        Curve::Memory,
        Curve::Replay,
    ];

    /// `ids`, `followers`, …: the record's scenario is `growth-<name>`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Curve::Ids => "ids",
            Curve::Followers => "followers",
            Curve::Size => "size",
            Curve::Memory => "memory",
            Curve::Replay => "replay",
        }
    }
}

/// Flags of `growth`. The shared flags that apply: --systems, --trials (default 1 here),
/// --out, --quick, --e2e-secs and --e2e-warmup (the followers curve), --publish-max-secs,
/// --idle-threshold, --idle-wait, --bin-dir; --tiers is ignored (tier A).
#[derive(Debug, Clone, Args)]
pub(crate) struct GrowthArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Curves to draw, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub(crate) curves: Vec<Curve>,
    /// Data IDs written at once, comma-separated counts (k and M suffixes allowed)
    /// (default 1,100,10k; 1,10,100 with --quick).
    #[arg(long, value_parser = parse_count_list)]
    pub(crate) ids: Option<Points>,
    /// Followers of one data ID, comma-separated (default 1,100,1000; 1,10 with --quick).
    #[arg(long, value_parser = parse_count_list)]
    pub(crate) followers: Option<Points>,
    /// Events per second published while the followers read.
    #[arg(long, default_value_t = 1000)]
    pub(crate) follower_rate: u64,
    /// Event sizes in bytes, comma-separated (KiB, MiB suffixes allowed)
    /// (default 100,1KiB,64KiB,1MiB; 100,1KiB,64KiB with --quick).
    #[arg(long, value_parser = parse_count_list)]
    pub(crate) sizes: Option<Points>,
    /// Data IDs created for the memory curve (default 10k; 200 with --quick).
    #[arg(long, value_parser = parse_count)]
    pub(crate) memory_ids: Option<u64>,
    /// Followers attached for the memory curve (default 1000; 20 with --quick).
    #[arg(long, value_parser = parse_count)]
    pub(crate) memory_followers: Option<u64>,
    /// Log sizes replayed, in events, comma-separated (default 1M,10M; 20k,50k with --quick).
    #[arg(long, value_parser = parse_count_list)]
    pub(crate) log_sizes: Option<Points>,
}

/// The x values of one curve, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Points(pub(crate) Vec<u64>);

/// `100`, `10k`, `10M`, `64KiB`, `1MiB`: k and M are powers of ten, KiB and MiB of two.
pub(crate) fn parse_count(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a count (e.g. 100, 10k, 1M, 64KiB, 1MiB)"))?;
    let scale = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        _ => {
            return Err(format!(
                "{text:?}: unknown suffix {suffix:?} (use k, M, KiB or MiB)"
            ));
        }
    };
    let value = n
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if value == 0 {
        return Err(format!("{text:?}: a point must be at least 1"));
    }
    Ok(value)
}

/// A comma-separated list of [`parse_count`] values, at least one.
pub(crate) fn parse_count_list(text: &str) -> Result<Points, String> {
    let points = text
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(parse_count)
        .collect::<Result<Vec<u64>, String>>()?;
    if points.is_empty() {
        return Err("no point given".into());
    }
    Ok(Points(points))
}

/// What `failover` kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum KillTarget {
    /// The replica serving the reader (ours only).
    Replica,
    /// The write leader: our primary, JetStream's stream leader.
    Primary,
}

impl FailoverArgs {
    /// The load and limits of `--kill primary`.
    pub(crate) fn primary_kill_shape(&self) -> crate::primary_kill::Shape {
        let quick = self.run.quick;
        let secs = |v: Option<f64>, full: f64, short: f64| {
            Duration::from_secs_f64(v.unwrap_or(if quick { short } else { full }).max(0.0))
        };
        crate::primary_kill::Shape {
            rate: self.publish_rate.max(1),
            events_per_batch: self.events_per_batch.max(1),
            payload: self.run.payload.max(crate::primary_kill::MIN_PAYLOAD),
            before: secs(self.before_secs, 3.0, 1.0),
            after: secs(self.after_secs, 2.0, 1.0),
            deadline: Duration::from_secs_f64(self.resume_deadline.max(1.0)),
        }
    }
}

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub(crate) enum SystemKind {
    /// Event Catcher: one ec-node.
    Ec,
    /// NATS JetStream: one nats-server, file storage.
    Jetstream,
    /// Redis Streams: one redis-server with AOF.
    Redis,
}

impl SystemKind {
    /// The name used in records and the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SystemKind::Ec => "ec",
            SystemKind::Jetstream => "jetstream",
            SystemKind::Redis => "redis",
        }
    }
}

/// A durability tier, the same for every system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub(crate) enum Tier {
    /// Acknowledged after the write, fsync within 1 s.
    A,
    /// Acknowledged after fsync.
    B,
}

impl Tier {
    /// `a` or `b`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tier::A => "a",
            Tier::B => "b",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Options shared by the suite and every scenario.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Systems to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "ec,jetstream,redis")]
    pub(crate) systems: Vec<SystemKind>,
    /// Durability tiers, comma-separated: a (fsync within 1 s), b (fsync before ack).
    #[arg(long, value_delimiter = ',', default_value = "a,b")]
    pub(crate) tiers: Vec<Tier>,
    /// Trials per system and tier (default 5; 1 with --quick).
    #[arg(long)]
    pub(crate) trials: Option<usize>,
    /// Append every measurement to this file as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Smoke-test sizes: 50k events, 1 trial, short end-to-end and lookup phases.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Events to publish and replay (default 1,000,000; 50,000 with --quick).
    #[arg(long)]
    pub(crate) events: Option<u64>,
    /// Events the proxy scenario publishes and then replays, each replay one stream from
    /// offset 0 (default 5,000,000; 50,000 with --quick). Longer than --events: a replay of
    /// 1M events lasts about 150 ms here, and in one sitting its direct ÷ proxied ratio
    /// ranged 0.55–1.07 per trial, too wide to tell the two apart.
    #[arg(long, value_parser = parse_count)]
    pub(crate) proxy_events: Option<u64>,
    /// Payload bytes per event. Throughput scenarios publish pseudo-random bytes that no
    /// system can compress, the same for every system.
    #[arg(long, default_value_t = 100)]
    pub(crate) payload: usize,
    /// Unacknowledged events allowed at once when publishing.
    #[arg(long, default_value_t = 256)]
    pub(crate) in_flight: usize,
    /// Most events handed over at once (one PublishRequest, one Redis pipeline, or that
    /// many JetStream publishes whose acks are awaited together).
    #[arg(long, default_value_t = 64)]
    pub(crate) batch: usize,
    /// Stop a publish phase after this many seconds and report the rate reached so far
    /// (JetStream with sync always does ~6k ev/s).
    #[arg(long, default_value_t = 60.0)]
    pub(crate) publish_max_secs: f64,
    /// Events per second in the end-to-end scenario.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) e2e_rate: u64,
    /// Seconds of end-to-end load (default 20; 3 with --quick).
    #[arg(long)]
    pub(crate) e2e_secs: Option<f64>,
    /// Seconds of end-to-end load dropped at the start (default 2; 0.5 with --quick).
    #[arg(long)]
    pub(crate) e2e_warmup: Option<f64>,
    /// Seconds per lookup measurement (default 5; 1 with --quick).
    #[arg(long)]
    pub(crate) lookup_secs: Option<f64>,
    /// Concurrent callers of each lookup variant.
    #[arg(long, default_value_t = 64)]
    pub(crate) lookup_callers: usize,
    /// Also measure GetNodeForData of this ec-gateway binary in the lookup scenario, beside
    /// ours against the same Consul (variant `gateway-base`): two builds side by side.
    #[arg(long, value_name = "FILE")]
    pub(crate) lookup_base_gateway: Option<PathBuf>,
    /// A trial starts once the machine is at least this idle (percent of all cores).
    #[arg(long, default_value_t = 85.0)]
    pub(crate) idle_threshold: f64,
    /// Longest wait for the machine to be idle before a trial runs marked CONTENDED
    /// (default 30 s; 3 s with --quick).
    #[arg(long)]
    pub(crate) idle_wait: Option<f64>,
    /// Where ec-node and ec-gateway are (default: beside this executable).
    #[arg(long, env = "EC_BENCH_BIN_DIR", value_name = "DIR")]
    pub(crate) bin_dir: Option<PathBuf>,
}

/// [`RunArgs`] with every default resolved.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) systems: Vec<SystemKind>,
    pub(crate) tiers: Vec<Tier>,
    pub(crate) trials: usize,
    pub(crate) out: Option<PathBuf>,
    pub(crate) quick: bool,
    pub(crate) events: u64,
    pub(crate) proxy_events: u64,
    pub(crate) payload: usize,
    pub(crate) in_flight: usize,
    pub(crate) batch: usize,
    pub(crate) publish_max: Duration,
    pub(crate) e2e_rate: u64,
    pub(crate) e2e_duration: Duration,
    pub(crate) e2e_warmup: Duration,
    pub(crate) lookup_duration: Duration,
    pub(crate) lookup_callers: usize,
    pub(crate) lookup_base_gateway: Option<PathBuf>,
    pub(crate) idle_threshold: f64,
    pub(crate) idle_wait: Duration,
    pub(crate) bin_dir: Option<PathBuf>,
}

impl RunArgs {
    /// Resolves the defaults that depend on `--quick`.
    pub(crate) fn settings(&self) -> Settings {
        let quick = self.quick;
        let secs = |v: Option<f64>, full: f64, short: f64| {
            Duration::from_secs_f64(v.unwrap_or(if quick { short } else { full }).max(0.0))
        };
        let mut systems = Vec::new();
        for s in &self.systems {
            if !systems.contains(s) {
                systems.push(*s);
            }
        }
        let mut tiers = Vec::new();
        for t in &self.tiers {
            if !tiers.contains(t) {
                tiers.push(*t);
            }
        }
        Settings {
            systems,
            tiers,
            trials: self.trials.unwrap_or(if quick { 1 } else { 5 }).max(1),
            out: self.out.clone(),
            quick,
            events: self
                .events
                .unwrap_or(if quick { 50_000 } else { 1_000_000 })
                .max(2),
            proxy_events: self
                .proxy_events
                .unwrap_or(if quick { 50_000 } else { 5_000_000 })
                .max(2),
            payload: self.payload.max(16),
            in_flight: self.in_flight.max(1),
            batch: self.batch.max(1),
            publish_max: Duration::from_secs_f64(self.publish_max_secs.max(1.0)),
            e2e_rate: self.e2e_rate.max(1),
            e2e_duration: secs(self.e2e_secs, 20.0, 3.0),
            e2e_warmup: secs(self.e2e_warmup, 2.0, 0.5),
            lookup_duration: secs(self.lookup_secs, 5.0, 1.0),
            lookup_callers: self.lookup_callers.max(1),
            lookup_base_gateway: self.lookup_base_gateway.clone(),
            idle_threshold: self.idle_threshold,
            idle_wait: secs(self.idle_wait, 30.0, 3.0),
            bin_dir: self.bin_dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_decimal_and_binary_suffixes() {
        assert_eq!(parse_count("100"), Ok(100));
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("10M"), Ok(10_000_000));
        assert_eq!(parse_count("1KiB"), Ok(1024));
        assert_eq!(parse_count(" 64KiB "), Ok(65_536));
        assert_eq!(parse_count("1MiB"), Ok(1_048_576));
        for bad in ["", "k", "0", "1GiB", "1.5k", "-3", "99999999999999999999"] {
            assert!(parse_count(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn point_lists_keep_their_order() {
        assert_eq!(
            parse_count_list("1,100,10k"),
            Ok(Points(vec![1, 100, 10_000]))
        );
        assert_eq!(parse_count_list("1MiB,"), Ok(Points(vec![1 << 20])));
        assert!(parse_count_list(",").is_err());
        assert!(parse_count_list("1,x").is_err());
    }

    #[test]
    fn the_proxy_replays_a_longer_log_than_the_other_scenarios() {
        let settings = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("flags");
            let Command::Proxy(run) = cli.command else {
                panic!("not proxy");
            };
            run.settings()
        };
        let s = settings(&["ec-bench", "proxy"]);
        assert_eq!((s.events, s.proxy_events), (1_000_000, 5_000_000));
        let s = settings(&["ec-bench", "proxy", "--quick"]);
        assert_eq!((s.events, s.proxy_events), (50_000, 50_000));
        let s = settings(&["ec-bench", "proxy", "--proxy-events", "20M"]);
        assert_eq!(s.proxy_events, 20_000_000);
        assert!(Cli::try_parse_from(["ec-bench", "proxy", "--proxy-events", "-1"]).is_err());
    }

    #[test]
    fn growth_flags_parse() {
        let cli = Cli::try_parse_from([
            "ec-bench", "growth", "--curves", "ids,size", "--sizes", "100,1MiB", "--quick",
        ])
        .expect("flags");
        let Command::Growth(g) = cli.command else {
            panic!("not growth");
        };
        assert_eq!(g.curves, vec![Curve::Ids, Curve::Size]);
        assert_eq!(g.sizes, Some(Points(vec![100, 1 << 20])));
        assert!(g.run.quick);
    }
}
