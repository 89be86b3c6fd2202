//! `relay splitter`: the relay's fan-out tier in the same binary (see `shards::splitter` for what it
//! does with its upstream's frames, [`api`] for what it serves and passes on). Its core layout:
//! the follower (one websocket to the upstream, one writer that group-commits frames in upstream
//! order) on one CPU, fanout shards and the API on the others, RocksDB's compactions and retention
//! on the compaction CPU. No ingest shards, no sequencer.

pub mod api;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use prometheus_client::registry::Registry;
use shards::Metrics;
use shards::fanout::{FanoutConfig, FanoutShard, SubscriberDirectory};
use shards::hosts::{HostPolicy, HostRegistry};
use shards::messages::PublishedBatch;
use shards::net::HttpClient;
use shards::splitter::{SplitterState, UpstreamUrl};

use crate::cli::SplitterArgs;
use crate::layout;
use crate::runtime::{Control, FANOUT_QUEUE, IO_MEMORY_BYTES, SHUTDOWN_GRACE};

/// What one executor of a splitter runs.
#[derive(Default)]
struct Work {
    follower: Option<Vec<SharedSender<PublishedBatch>>>,
    fanout: Option<(usize, SharedReceiver<PublishedBatch>)>,
}

struct ExecCtx {
    args: SplitterArgs,
    upstreams: Vec<UpstreamUrl>,
    http: HttpClient,
    store: Arc<storage::Store>,
    committed: Arc<AtomicU64>,
    metrics: Metrics,
    registry: Arc<Registry>,
    control: Arc<Control>,
    hosts: Arc<HostRegistry>,
    directory: Arc<SubscriberDirectory>,
    fanout_shards: usize,
    limits: Arc<crate::limits::ConnectionLimits>,
    health: Arc<shards::health::Health>,
    engine_metrics: crate::metrics::EngineMetrics,
    state: Arc<SplitterState>,
    via_token: String,
    follower_stop: Arc<AtomicBool>,
    cpu: usize,
}

/// Runs `relay splitter` until SIGINT/SIGTERM or a fatal error.
///
/// # Errors
/// Bad flags, a store that cannot be opened, an executor that cannot start, a fatal store error.
pub fn run(args: SplitterArgs) -> anyhow::Result<()> {
    let allowed = layout::allowed_cpus();
    let lay = layout::resolve(&allowed, None, args.fanout_cores.as_deref(), args.follower_core, args.compaction_core)?;
    if args.print_layout {
        for cpu in lay.executor_cpus() {
            let mut roles = Vec::new();
            if cpu == lay.sequencer {
                roles.push("follower".to_owned());
            }
            if let Some(i) = lay.fanout.iter().position(|c| *c == cpu) {
                roles.push(format!("fanout[{i}]+api"));
            }
            if cpu == lay.compaction {
                roles.push("compaction".to_owned());
            }
            if !roles.is_empty() {
                println!("cpu {cpu}: {}", roles.join(" "));
            }
        }
        return Ok(());
    }
    if args.upstreams.is_empty() {
        bail!("--upstream is required (a relay's or another splitter's URL, e.g. wss://bsky.network)");
    }
    let upstreams = args
        .upstreams
        .iter()
        .map(|u| UpstreamUrl::parse(u).map_err(|e| anyhow::anyhow!("--upstream {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for t in &args.crawl_forward {
        shards::net::HttpUrl::parse(t).map_err(|e| anyhow::anyhow!("--crawl-forward {t}: {e}"))?;
    }
    if args.api.admin_password.as_deref().is_some_and(|p| p.trim().is_empty()) {
        bail!("--admin-password (RELAY_ADMIN_PASSWORD) is empty: set a password, or leave it unset");
    }
    let extra_ca = match &args.api.tls_ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading --tls-ca {}", path.display()))?),
        None => None,
    };
    let http = HttpClient::new(extra_ca.as_deref(), shards::net::dns::Dns::default()).context("--tls-ca")?;
    crate::runtime::raise_soft_limit(libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK");
    crate::runtime::raise_soft_limit(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE");
    let store = crate::store_threads::open_store(&args.store, lay.compaction)?;
    let committed = Arc::new(AtomicU64::new(store.last_seq()?.map_or(0, |s| s.0)));
    // The relay's host table is not used (host calls are the upstream's), but the API's context
    // holds one.
    let hosts = Arc::new(HostRegistry::new(Arc::clone(&store), HostPolicy::default()).context("the host table")?);
    let directory = Arc::new(SubscriberDirectory::default());
    let limits = crate::limits::ConnectionLimits::new(args.api.max_connections_per_ip, args.api.max_subscribers);
    let health = Arc::new(shards::health::Health::default());
    let metrics = Metrics::default();
    let engine_metrics = crate::metrics::EngineMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    engine_metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let (control, signals) = Control::new()?;
    let state = Arc::new(SplitterState::default());
    // A per-process name for `Via` (the loop guard): the pid and start time are unique enough.
    let via_token = format!("splitter-{}-{:x}", std::process::id(), shards::unix_ms());
    let follower_stop = Arc::new(AtomicBool::new(false));

    let mut work: std::collections::BTreeMap<usize, Work> =
        lay.executor_cpus().into_iter().map(|c| (c, Work::default())).collect();
    let mut fanout_tx = Vec::new();
    for (index, cpu) in lay.fanout.iter().enumerate() {
        let (tx, rx) = shared_channel::new_bounded(FANOUT_QUEUE);
        fanout_tx.push(tx);
        if let Some(w) = work.get_mut(cpu) {
            w.fanout = Some((index, rx));
        }
    }
    if let Some(w) = work.get_mut(&lay.sequencer) {
        w.follower = Some(fanout_tx);
    }
    tracing::info!(
        upstreams = %upstreams.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        data_dir = %args.store.data_dir.display(),
        listen = %args.api.listen,
        "starting splitter"
    );
    let mut handles = Vec::new();
    for (cpu, w) in work {
        if w.follower.is_none() && w.fanout.is_none() {
            continue;
        }
        let ctx = ExecCtx {
            args: args.clone(),
            upstreams: upstreams.clone(),
            http: http.clone(),
            store: Arc::clone(&store),
            committed: Arc::clone(&committed),
            metrics: metrics.clone(),
            registry: Arc::clone(&registry),
            control: Arc::clone(&control),
            hosts: Arc::clone(&hosts),
            directory: Arc::clone(&directory),
            fanout_shards: lay.fanout.len(),
            limits: Arc::clone(&limits),
            health: Arc::clone(&health),
            engine_metrics: engine_metrics.clone(),
            state: Arc::clone(&state),
            via_token: via_token.clone(),
            follower_stop: Arc::clone(&follower_stop),
            cpu,
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("splitter-cpu{cpu}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || run_executor(ctx, w))
            .map_err(|e| anyhow::anyhow!("starting the executor on CPU {cpu}: {e} (io_uring, `ulimit -l`?)"))?;
        handles.push(handle);
    }
    let policy =
        storage::retention::RetentionPolicy { window: args.store.retention.0, max_disk_bytes: args.store.max_disk };
    let retention = crate::store_threads::start_retention(
        Arc::clone(&store),
        policy,
        lay.compaction,
        Arc::clone(&control),
        metrics.clone(),
    )?;
    control.wait_for_stop(signals);
    for h in handles {
        let _ = h.join();
    }
    let _ = retention.join();
    let fatal = control.fatal.lock().map(|f| f.clone()).unwrap_or_default();
    drop(store);
    if let Some(first) = fatal.first() {
        bail!("{first}");
    }
    tracing::info!("splitter stopped");
    Ok(())
}

async fn run_executor(ctx: ExecCtx, work: Work) {
    let ex = glommio::executor();
    let stats_tq = ex.create_task_queue(Shares::Static(10), Latency::NotImportant, "stats");
    if let Ok(t) = glommio::spawn_local_into(ctx.engine_metrics.clone().sample_executor(ctx.cpu), stats_tq) {
        t.detach();
    }
    let mut follower_task = None;
    if let Some(to_fanout) = work.follower {
        let tq = ex.create_task_queue(Shares::Static(1000), Latency::Matters(Duration::from_millis(10)), "follower");
        let mut config = shards::splitter::follow::FollowConfig::new(ctx.upstreams.clone());
        config.min_free_disk_bytes = ctx.args.store.min_free_disk;
        config.commit_interval = ctx.args.store.commit_interval;
        let fut = shards::splitter::follow::run(
            config,
            ctx.http.clone(),
            Arc::clone(&ctx.store),
            to_fanout,
            Arc::clone(&ctx.committed),
            ctx.metrics.clone(),
            Arc::clone(&ctx.health),
            Arc::clone(&ctx.state),
            Arc::clone(&ctx.follower_stop),
        );
        let control = Arc::clone(&ctx.control);
        follower_task = glommio::spawn_local_into(
            async move {
                if let Err(e) = fut.await {
                    control.fail(format!("splitter follower stopped: {e}"));
                }
            },
            tq,
        )
        .ok();
    }
    let mut fanout = None;
    if let Some((index, rx)) = work.fanout {
        match start_fanout(&ctx, index, rx) {
            Ok(shard) => fanout = Some(shard),
            Err(e) => ctx.control.fail(format!("{e:#}")),
        }
    }
    ctx.control.stop.wait().await;
    ctx.follower_stop.store(true, Ordering::Release);
    if let Some(shard) = &fanout {
        shard.shut_down();
    }
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    if let Some(task) = follower_task
        && shards::net::with_timeout(SHUTDOWN_GRACE, task).await.is_none()
    {
        tracing::warn!("the follower did not stop within the shutdown grace period");
    }
    while fanout.as_ref().is_some_and(|s| s.serving() > 0) && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

fn start_fanout(ctx: &ExecCtx, index: usize, rx: SharedReceiver<PublishedBatch>) -> anyhow::Result<Rc<FanoutShard>> {
    let ex = glommio::executor();
    let fanout_tq = ex.create_task_queue(Shares::Static(1000), Latency::NotImportant, "fanout");
    let replay_tq = ex.create_task_queue(Shares::Static(250), Latency::NotImportant, "replay");
    let api_tq = ex.create_task_queue(Shares::Static(1000), Latency::Matters(Duration::from_millis(5)), "api");
    let api = &ctx.args.api;
    let config = FanoutConfig {
        subscriber_queue: usize::try_from(api.subscriber_queue).unwrap_or(usize::MAX),
        stall_timeout: api.subscriber_stall_timeout,
        coalesce: api.fanout_coalesce.0,
        replay_memory_bytes: api.replay_memory / ctx.fanout_shards.max(1) as u64,
        shard: index,
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
    glommio::spawn_local_into(Rc::clone(&shard).run_publisher(rx), fanout_tq)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .detach();
    glommio::spawn_local_into(Rc::clone(&shard).run_sampler(), fanout_tq).map_err(|e| anyhow::anyhow!("{e}"))?.detach();
    let listener = glommio::net::TcpListener::bind(api.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", api.listen))?;
    tracing::info!(listen = %api.listen, "listening");
    let splitter = Rc::new(api::SplitterApi {
        upstreams: ctx.upstreams.clone(),
        crawl_forward: ctx.args.crawl_forward.clone(),
        state: Arc::clone(&ctx.state),
        via_token: ctx.via_token.clone(),
        admin_password: api.admin_password.clone(),
    });
    let xrpc_ctx = Rc::new(crate::xrpc::Ctx {
        fanout: Rc::clone(&shard),
        fanout_tq,
        registry: Arc::clone(&ctx.registry),
        admin: api.admin_password.clone().map(crate::admin::Admin::new),
        hosts: Arc::clone(&ctx.hosts),
        to_sequencer: None,
        splitter: Some(splitter),
        http: ctx.http.clone(),
        crawl: crate::xrpc::request_crawl::CrawlConfig::default(),
        metrics: ctx.metrics.clone(),
        limits: Arc::clone(&ctx.limits),
        health: Arc::clone(&ctx.health),
        engine_metrics: ctx.engine_metrics.clone(),
        request_memory: Rc::new(glommio::sync::Semaphore::new(crate::http::REQUEST_MEMORY_BYTES as u64)),
    });
    glommio::spawn_local_into(crate::http::accept_loop(listener, xrpc_ctx, api_tq), api_tq)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .detach();
    Ok(shard)
}
