//! Process start-up and shutdown: the store (opened on the compaction core so RocksDB's threads
//! inherit that pinning, with retention beside it: `store_threads.rs`), the channels between
//! roles, one pinned glommio executor per CPU with a task queue per role, and signal handling.

use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use prometheus_client::registry::Registry;
use shards::fanout::{FanoutConfig, FanoutShard, SubscriberDirectory};
use shards::hosts::{HostPolicy, HostRegistry};
use shards::identity::IdentityConfig;
use shards::ingest::{IngestConfig, Upstream};
use shards::messages::{HostCommand, PublishedBatch, ToSequencer};
use shards::net::HttpClient;
use shards::sequencer::SequencerConfig;
use shards::stop::StopSignal;
use shards::{Metrics, ingest, sequencer};
use storage::Store;

use crate::ServeArgs;
use crate::layout;

/// Capacity of each ingest → sequencer queue, in messages.
const INGEST_QUEUE: usize = 4096;
/// Capacity of each sequencer → ingest command queue (host changes), in commands.
const HOST_COMMAND_QUEUE: usize = 1024;
/// Capacity of each admin API → sequencer queue, in requests.
const ADMIN_QUEUE: usize = 256;
/// Capacity of each sequencer → fanout queue, in batches.
pub(crate) const FANOUT_QUEUE: usize = 256;
/// How long a shutdown waits for the sequencer's batch in flight and for subscribers' close frames.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// glommio's registered I/O buffer per executor. The relay does no glommio file I/O, so this stays
/// small; it is locked memory (see kernel-notes.md).
pub(crate) const IO_MEMORY_BYTES: usize = 1 << 20;

/// The sequencer's ends of the channels: from every ingest shard, to every fanout shard.
struct SequencerWork {
    from_ingest: Vec<SharedReceiver<ToSequencer>>,
    to_ingest: Vec<SharedSender<HostCommand>>,
    to_fanout: Vec<SharedSender<PublishedBatch>>,
}

/// What one executor runs.
#[derive(Default)]
struct Work {
    /// Shard index, its queue to the sequencer, its command queue from it.
    ingest: Option<(usize, SharedSender<ToSequencer>, SharedReceiver<HostCommand>)>,
    sequencer: Option<SequencerWork>,
    /// From the sequencer, and the admin API's way back to it.
    fanout: Option<(usize, SharedReceiver<PublishedBatch>, SharedSender<ToSequencer>)>,
}

/// Shared between executors and the main thread.
pub(crate) struct Control {
    pub(crate) stop: StopSignal,
    pub(crate) fatal: Mutex<Vec<String>>,
    /// Closes the main thread's wait for SIGINT/SIGTERM when an executor stops the process.
    signals: signal_hook::iterator::Handle,
}

impl Control {
    /// A control block and the SIGINT/SIGTERM watch its [`Control::wait_for_stop`] blocks on
    /// (installed here, before any executor starts, so a fatal error can always end the wait).
    pub(crate) fn new() -> anyhow::Result<(Arc<Self>, signal_hook::iterator::Signals)> {
        let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
            .context("installing signal handlers")?;
        let control =
            Arc::new(Self { stop: StopSignal::new(), fatal: Mutex::new(Vec::new()), signals: signals.handle() });
        Ok((control, signals))
    }

    pub(crate) fn fail(&self, msg: String) {
        tracing::error!("{msg}");
        if let Ok(mut f) = self.fatal.lock() {
            f.push(msg);
        }
        self.stop.stop();
        self.signals.close();
    }

    /// Blocks the calling (main) thread until SIGINT/SIGTERM or a fatal error, then sets
    /// [`Control::stop`]. Sleeps in the kernel meanwhile: no polling.
    pub(crate) fn wait_for_stop(&self, mut signals: signal_hook::iterator::Signals) {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "shutting down");
        }
        self.stop.stop();
    }
}

fn parse_hosts(raw: &[String], allow_insecure: bool) -> anyhow::Result<Vec<Upstream>> {
    let mut hosts: Vec<Upstream> = Vec::new();
    for h in raw {
        let up = Upstream::parse(h, allow_insecure).map_err(|e| anyhow::anyhow!("--host {e}"))?;
        if !hosts.iter().any(|x| x.host == up.host) {
            hosts.push(up);
        }
    }
    Ok(hosts)
}

/// Raises a resource limit's soft value to its hard value (what `ulimit -l`/`ulimit -n` allow
/// without privileges) and returns the soft value now in force.
pub(crate) fn raise_soft_limit(resource: libc::__rlimit_resource_t, name: &str) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        if libc::getrlimit(resource, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(resource, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            } else {
                tracing::warn!("cannot raise the {name} soft limit to the hard limit");
            }
        }
    }
    lim.rlim_cur
}

/// Raises `RLIMIT_MEMLOCK` (io_uring's locked buffers) and `RLIMIT_NOFILE` (one descriptor per host
/// connection and per API connection) to their hard limits.
fn raise_limits(args: &ServeArgs) {
    raise_soft_limit(libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK");
    let files = raise_soft_limit(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE");
    let wanted = args.api.max_subscribers.saturating_add(1024) as u64;
    if files < wanted {
        tracing::warn!(
            nofile = files,
            max_subscribers = args.api.max_subscribers,
            "RLIMIT_NOFILE is below --max-subscribers + 1024: raise LimitNOFILE (systemd) or `ulimit -n`"
        );
    }
}

/// Records the `--host` hosts in the host table. The operator named them, so they are trusted (the
/// trusted account limit when new, trusted rate limits); a known one keeps its account limit and
/// takes the flag's TLS choice. A banned host stays banned.
fn add_flag_hosts(registry: &HostRegistry, hosts: &[Upstream], trusted_limit: u64) -> anyhow::Result<()> {
    let now = shards::unix_ms();
    let names: Vec<&str> = hosts.iter().map(|u| u.host.as_str()).collect();
    let stored = registry
        .store()
        .update_host_configs(&names, |name, c| {
            let up = hosts.iter().find(|u| u.host.as_str() == name)?;
            let fresh = storage::HostConfig {
                trusted: true,
                account_limit: trusted_limit,
                ..registry.new_config(&up.host, up.tls, now)
            };
            Some(c.map_or(fresh, |c| storage::HostConfig { tls: up.tls, trusted: true, ..c }))
        })
        .context("recording the --host hosts")?;
    for (up, (_, after)) in hosts.iter().zip(stored) {
        if after.is_some_and(|c| c.banned) {
            tracing::warn!(host = %up.host, "--host names a banned host; not connecting (unban it with /admin/pds/unblock)");
        }
    }
    Ok(())
}

/// Runs `relay serve` until SIGINT/SIGTERM or a fatal error.
pub fn serve(mut args: ServeArgs) -> anyhow::Result<()> {
    // `RELAY_MAX_DISK` was `RELAY_MAX_EVENTS_DISK` (it bounded the events alone); an environment
    // file with the old name still sets it.
    if args.store.max_disk.is_none()
        && let Ok(old) = std::env::var("RELAY_MAX_EVENTS_DISK")
    {
        args.store.max_disk =
            Some(crate::cli::parse_bytes(&old).map_err(|e| anyhow::anyhow!("RELAY_MAX_EVENTS_DISK: {e}"))?);
        tracing::warn!("RELAY_MAX_EVENTS_DISK is now RELAY_MAX_DISK, and bounds the whole data directory");
    }
    let allowed = layout::allowed_cpus();
    let layout = layout::resolve(
        &allowed,
        args.ingest_cores.as_deref(),
        args.fanout_cores.as_deref(),
        args.sequencer_core,
        args.compaction_core,
    )?;
    if args.print_layout {
        print!("{layout}");
        return Ok(());
    }
    let plc_url = args.plc_url.clone().context("--plc-url is required")?;
    shards::net::HttpUrl::parse(&plc_url).with_context(|| format!("--plc-url {plc_url}"))?;
    let extra_ca = match &args.api.tls_ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading --tls-ca {}", path.display()))?),
        None => None,
    };
    let http = HttpClient::new(extra_ca.as_deref(), shards::net::dns::Dns::default()).context("--tls-ca")?;
    let hosts = parse_hosts(&args.hosts, args.allow_insecure_ws)?;
    if args.idle_timeout < Duration::from_secs(1) {
        bail!("--idle-timeout must be at least 1s");
    }
    if args.api.admin_password.as_deref().is_some_and(|p| p.trim().is_empty()) {
        bail!(
            "--admin-password (RELAY_ADMIN_PASSWORD) is empty: set a password, or leave it unset to disable the admin API"
        );
    }
    raise_limits(&args);

    let store = crate::store_threads::open_store(&args.store, layout.compaction)?;
    if let Some(floor) = args.initial_seq_number.and_then(|n| n.checked_sub(1))
        && store.raise_last_seq(wire::RelaySeq(floor)).context("recording --initial-seq-number")?
    {
        tracing::warn!(next_seq = floor + 1, "--initial-seq-number: the relay sequence continues from here");
    }
    let committed = Arc::new(AtomicU64::new(store.last_seq()?.map_or(0, |s| s.0)));
    let policy = HostPolicy { new_hosts_per_day: args.new_hosts_per_day, ..args.host_policy.policy() };
    let hosts_registry = Arc::new(HostRegistry::new(Arc::clone(&store), policy).context("reading the host table")?);
    add_flag_hosts(&hosts_registry, &hosts, args.host_policy.trusted_account_limit)?;
    let directory = Arc::new(SubscriberDirectory::default());
    let limits = crate::limits::ConnectionLimits::new(args.api.max_connections_per_ip, args.api.max_subscribers);
    let health = Arc::new(shards::health::Health::default());
    let sequencer_stop = Arc::new(StopSignal::new());
    let metrics = Metrics::default();
    let engine_metrics = crate::metrics::EngineMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    engine_metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let (control, signals) = Control::new()?;

    let mut work: std::collections::BTreeMap<usize, Work> =
        layout.executor_cpus().into_iter().map(|c| (c, Work::default())).collect();
    let mut ingest_rx = Vec::new();
    let mut to_ingest = Vec::new();
    for (index, cpu) in layout.ingest.iter().enumerate() {
        let (tx, rx) = shared_channel::new_bounded(INGEST_QUEUE);
        let (command_tx, command_rx) = shared_channel::new_bounded(HOST_COMMAND_QUEUE);
        ingest_rx.push(rx);
        to_ingest.push(command_tx);
        if let Some(w) = work.get_mut(cpu) {
            w.ingest = Some((index, tx, command_rx));
        }
    }
    let mut fanout_tx = Vec::new();
    for (index, cpu) in layout.fanout.iter().enumerate() {
        let (tx, rx) = shared_channel::new_bounded(FANOUT_QUEUE);
        let (admin_tx, admin_rx) = shared_channel::new_bounded(ADMIN_QUEUE);
        fanout_tx.push(tx);
        ingest_rx.push(admin_rx);
        if let Some(w) = work.get_mut(cpu) {
            w.fanout = Some((index, rx, admin_tx));
        }
    }
    if let Some(w) = work.get_mut(&layout.sequencer) {
        w.sequencer = Some(SequencerWork { from_ingest: ingest_rx, to_ingest, to_fanout: fanout_tx });
    }

    tracing::info!(layout = %layout.summary(), data_dir = %args.store.data_dir.display(), listen = %args.api.listen, "starting relay");
    let mut handles = Vec::new();
    for (cpu, w) in work {
        let ctx = ExecCtx {
            args: args.clone(),
            plc_url: plc_url.clone(),
            http: http.clone(),
            committed: Arc::clone(&committed),
            store: Arc::clone(&store),
            metrics: metrics.clone(),
            registry: Arc::clone(&registry),
            control: Arc::clone(&control),
            hosts: Arc::clone(&hosts_registry),
            directory: Arc::clone(&directory),
            ingest_shards: layout.ingest.len(),
            fanout_shards: layout.fanout.len(),
            limits: Arc::clone(&limits),
            health: Arc::clone(&health),
            engine_metrics: engine_metrics.clone(),
            cpu,
            sequencer_stop: Arc::clone(&sequencer_stop),
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("relay-cpu{cpu}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || run_executor(ctx, w))
            .map_err(|e| {
                anyhow::anyhow!(
                    "starting the executor on CPU {cpu}: {e} (is io_uring available and `ulimit -l` at least 1 MiB?)"
                )
            })?;
        handles.push(handle);
    }

    let policy =
        storage::retention::RetentionPolicy { window: args.store.retention.0, max_disk_bytes: args.store.max_disk };
    if policy.window.is_none() {
        tracing::warn!("--retention off: every event is kept and the data directory grows without bound");
    }
    let retention = crate::store_threads::start_retention(
        Arc::clone(&store),
        policy,
        layout.compaction,
        Arc::clone(&control),
        metrics.clone(),
    )?;
    // The main thread waits for SIGINT/SIGTERM (or a fatal error an executor reports) instead of a
    // thread of its own.
    control.wait_for_stop(signals);
    for h in handles {
        let _ = h.join();
    }
    let _ = retention.join();
    let fatal = control.fatal.lock().map(|f| f.clone()).unwrap_or_default();
    // Dropping the last Arc<Store> closes RocksDB; every acknowledged batch is already in its WAL.
    drop(store);
    if let Some(first) = fatal.first() {
        bail!("{first}");
    }
    tracing::info!("relay stopped");
    Ok(())
}

struct ExecCtx {
    args: ServeArgs,
    plc_url: String,
    http: HttpClient,
    committed: Arc<AtomicU64>,
    store: Arc<Store>,
    metrics: Metrics,
    registry: Arc<Registry>,
    control: Arc<Control>,
    hosts: Arc<HostRegistry>,
    directory: Arc<SubscriberDirectory>,
    ingest_shards: usize,
    fanout_shards: usize,
    limits: Arc<crate::limits::ConnectionLimits>,
    health: Arc<shards::health::Health>,
    engine_metrics: crate::metrics::EngineMetrics,
    cpu: usize,
    /// Set at shutdown: the sequencer stops after its batch in flight.
    sequencer_stop: Arc<StopSignal>,
}

async fn run_executor(ctx: ExecCtx, work: Work) {
    let mut sequencer_task = None;
    let ex = glommio::executor();
    let control = Arc::clone(&ctx.control);
    let stats_tq = ex.create_task_queue(Shares::Static(10), Latency::NotImportant, "stats");
    if let Ok(t) = glommio::spawn_local_into(ctx.engine_metrics.clone().sample_executor(ctx.cpu), stats_tq) {
        t.detach();
    }
    if let Some((index, tx, commands)) = work.ingest {
        let tq = ex.create_task_queue(Shares::Static(1000), Latency::NotImportant, "ingest");
        let mut config = IngestConfig::new(IdentityConfig::new(ctx.plc_url.clone(), ctx.http.clone()));
        config.lenient_sync = ctx.args.lenient_sync;
        config.startup_ramp = ctx.args.startup_ramp;
        config.offline_after_failures = ctx.args.offline_after_failures;
        config.offline_retry = ctx.args.offline_retry;
        config.idle_timeout = ctx.args.idle_timeout;
        config.public_only = !ctx.args.allow_private_hosts;
        config.identity.web_public_only = !ctx.args.allow_private_hosts;
        config.identity.dev_localhost = ctx.args.dev_localhost_port.is_some();
        let fut = ingest::run(
            config,
            index,
            ctx.ingest_shards,
            tx,
            commands,
            Arc::clone(&ctx.store),
            Arc::clone(&ctx.hosts),
            ctx.metrics.clone(),
        );
        if let Ok(t) = glommio::spawn_local_into(fut, tq) {
            t.detach();
        }
    }
    if let Some(SequencerWork { from_ingest: rx, to_ingest, to_fanout: tx }) = work.sequencer {
        let tq = ex.create_task_queue(Shares::Static(1000), Latency::Matters(Duration::from_millis(10)), "sequencer");
        let store = Arc::clone(&ctx.store);
        let metrics = ctx.metrics.clone();
        let control = Arc::clone(&ctx.control);
        let config = SequencerConfig {
            min_free_disk_bytes: ctx.args.store.min_free_disk,
            commit_interval: ctx.args.store.commit_interval,
            ..SequencerConfig::default()
        };
        let committed = Arc::clone(&ctx.committed);
        let health = Arc::clone(&ctx.health);
        let stop = Arc::clone(&ctx.sequencer_stop);
        let fut = async move {
            if let Err(e) = sequencer::run(config, committed, rx, to_ingest, tx, store, metrics, health, stop).await {
                control.fail(format!("sequencer stopped: {e}"));
            }
        };
        sequencer_task = glommio::spawn_local_into(fut, tq).ok();
    }
    let mut fanout = None;
    if let Some((index, rx, admin_tx)) = work.fanout {
        match start_fanout(&ctx, index, rx, admin_tx).await {
            Ok(shard) => fanout = Some(shard),
            Err(e) => control.fail(format!("{e:#}")),
        }
    }
    control.stop.wait().await;
    // Shutdown: the sequencer finishes the batch in flight (durable, then published) and stops;
    // subscribers get a close frame after their write in flight. Bounded, so a stuck socket cannot
    // hold the exit.
    ctx.sequencer_stop.stop();
    if let Some(shard) = &fanout {
        shard.shut_down();
    }
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    if let Some(task) = sequencer_task
        && shards::net::with_timeout(SHUTDOWN_GRACE, task).await.is_none()
    {
        tracing::warn!("the sequencer did not stop within the shutdown grace period");
    }
    while fanout.as_ref().is_some_and(|s| s.serving() > 0) && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_fanout(
    ctx: &ExecCtx,
    fanout_index: usize,
    rx: SharedReceiver<PublishedBatch>,
    admin_tx: SharedSender<ToSequencer>,
) -> anyhow::Result<Rc<FanoutShard>> {
    let ex = glommio::executor();
    let fanout_tq = ex.create_task_queue(Shares::Static(1000), Latency::NotImportant, "fanout");
    // Catch-up reading from the store: a quarter of live delivery's shares when both are busy.
    let replay_tq = ex.create_task_queue(Shares::Static(250), Latency::NotImportant, "replay");
    // The API answers health checks under load: its own queue, latency-sensitive.
    let api_tq = ex.create_task_queue(Shares::Static(1000), Latency::Matters(Duration::from_millis(5)), "api");
    let config = FanoutConfig {
        subscriber_queue: usize::try_from(ctx.args.api.subscriber_queue).unwrap_or(usize::MAX),
        stall_timeout: ctx.args.api.subscriber_stall_timeout,
        coalesce: ctx.args.api.fanout_coalesce.0,
        replay_memory_bytes: ctx.args.api.replay_memory / ctx.fanout_shards.max(1) as u64,
        shard: fanout_index,
        ..FanoutConfig::default()
    };
    let shard = FanoutShard::new(
        config,
        Arc::clone(&ctx.store),
        ctx.metrics.clone(),
        Arc::clone(&ctx.committed),
        Arc::clone(&ctx.directory),
    )
    .context("starting a fanout shard")?;
    shard.set_replay_queue(replay_tq);
    let serving = Rc::clone(&shard);
    glommio::spawn_local_into(Rc::clone(&shard).run_publisher(rx), fanout_tq)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .detach();
    glommio::spawn_local_into(Rc::clone(&shard).run_sampler(), fanout_tq).map_err(|e| anyhow::anyhow!("{e}"))?.detach();
    let listener = glommio::net::TcpListener::bind(ctx.args.api.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", ctx.args.api.listen))?;
    tracing::info!(listen = %ctx.args.api.listen, "listening");
    let admin = ctx.args.api.admin_password.clone().map(crate::admin::Admin::new);
    let xrpc_ctx = Rc::new(crate::xrpc::Ctx {
        fanout: shard,
        fanout_tq,
        registry: Arc::clone(&ctx.registry),
        admin,
        hosts: Arc::clone(&ctx.hosts),
        // Connecting waits for the sequencer's end.
        to_sequencer: Some(admin_tx.connect().await),
        splitter: None,
        http: ctx.http.clone(),
        crawl: crate::xrpc::request_crawl::CrawlConfig {
            dev_localhost_port: ctx.args.dev_localhost_port,
            allow_private_hosts: ctx.args.allow_private_hosts,
        },
        metrics: ctx.metrics.clone(),
        limits: Arc::clone(&ctx.limits),
        health: Arc::clone(&ctx.health),
        engine_metrics: ctx.engine_metrics.clone(),
        request_memory: Rc::new(glommio::sync::Semaphore::new(crate::http::REQUEST_MEMORY_BYTES as u64)),
    });
    glommio::spawn_local_into(crate::http::accept_loop(listener, xrpc_ctx, api_tq), api_tq)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .detach();
    Ok(serving)
}
