//! The `pullcheck` command line: parses flags, calls the library, maps exit codes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use pullcheck::check::{CheckOptions, ImageFilter, Report, Target, run_check};
use pullcheck::config::RegistryConfig;
use pullcheck::controller::{self, ControllerSettings};
use pullcheck::inventory::IncludeDisabled;
use pullcheck::inventory::files::load_paths;
use pullcheck::inventory::kube::{list_namespaces, list_node_platforms, list_workloads};
use pullcheck::inventory::secrets::PullSecrets;
use pullcheck::inventory::selector::LabelSelector;
use pullcheck::inventory::store::Selection;
use pullcheck::registry::{ClientSettings, Platform, RegistryClient, RequestObserver};
use pullcheck::schedule::ScheduleSettings;
use pullcheck::telemetry::ResourceSettings;
use pullcheck::telemetry::Telemetry;
use pullcheck::telemetry::logs::TransitionLog;
use pullcheck::telemetry::metrics::Metrics;
use pullcheck::telemetry::otlp::ProcessEnv;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

/// Can every image your Kubernetes workloads reference still be pulled?
#[derive(Parser)]
#[command(name = "pullcheck", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter for stderr (tracing syntax: `info`, `pullcheck=debug`).
    #[arg(long, env = "PULLCHECK_LOG", default_value = "warn", global = true)]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the cluster and keep every image probed over a window, pushing OpenTelemetry (OTLP).
    Run(Box<RunArgs>),
    /// Probe every image of a set of manifests, or of a cluster, once and report (exit 0 all available, 1 not, 2 input error).
    Check(Box<CheckArgs>),
    /// Print the version.
    Version,
}

#[derive(Args)]
struct CheckArgs {
    /// Manifest files or directories (recursive: .yaml, .yml, .json); `-` reads stdin.
    /// Without it, the workloads of the cluster of the kubeconfig are checked.
    #[arg(short = 'f', long = "filename", env = "PULLCHECK_FILENAME", value_delimiter = ',', conflicts_with_all = ["all_namespaces", "namespaces"])]
    filenames: Vec<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[arg(short = 'o', long, env = "PULLCHECK_OUTPUT", value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    images: ImageSelection,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Probes in flight at once over all registries.
    #[arg(long, env = "PULLCHECK_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// Also check workloads scaled to zero or suspended, of these kinds (`Deployment,CronJob`) or `all`.
    #[arg(long, env = "PULLCHECK_INCLUDE_DISABLED", value_delimiter = ',', value_name = "KIND")]
    include_disabled: Vec<String>,
    /// No progress line on stderr, even on a terminal.
    #[arg(long, env = "PULLCHECK_NO_PROGRESS")]
    no_progress: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    images: ImageSelection,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Also check workloads scaled to zero or suspended, of these kinds (`Deployment,CronJob`) or `all`.
    #[arg(long, env = "PULLCHECK_INCLUDE_DISABLED", value_delimiter = ',', value_name = "KIND")]
    include_disabled: Vec<String>,
    /// Every image is probed once per window.
    #[arg(long, env = "PULLCHECK_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How often the scheduler starts a batch.
    #[arg(long, env = "PULLCHECK_TICK", default_value = "15s", value_parser = humantime::parse_duration)]
    tick: Duration,
    /// An image whose probe failed is probed again after this.
    #[arg(long, env = "PULLCHECK_FAILURE_RETRY", default_value = "1m", value_parser = humantime::parse_duration)]
    failure_retry: Duration,
    /// Probes in flight per registry; a slow registry holds no more.
    #[arg(long, env = "PULLCHECK_MAX_IN_FLIGHT_PER_REGISTRY", default_value_t = 16)]
    max_in_flight_per_registry: usize,
    /// Address of /healthz and /readyz (`off` for none).
    #[arg(long, env = "PULLCHECK_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    health_addr: String,
    /// Log lines on stderr as `text` or `json`.
    #[arg(long, env = "PULLCHECK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// `k8s.cluster.name` on the resource (OTEL_RESOURCE_ATTRIBUTES can set it too).
    #[arg(long, env = "PULLCHECK_CLUSTER_NAME")]
    cluster_name: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then the in-cluster service account).
    #[arg(long, env = "PULLCHECK_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, env = "PULLCHECK_CONTEXT")]
    context: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, env = "PULLCHECK_ALL_NAMESPACES", conflicts_with = "namespaces")]
    all_namespaces: bool,
    /// These namespaces (repeatable); default: the context's namespace.
    #[arg(short = 'n', long = "namespace", env = "PULLCHECK_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Only namespaces whose labels match (Kubernetes selector syntax: `team in (a,b),!skip`).
    #[arg(long, env = "PULLCHECK_NAMESPACE_SELECTOR", default_value = "")]
    namespace_selector: String,
    /// Leave these namespaces out (repeatable).
    #[arg(long = "exclude-namespace", env = "PULLCHECK_EXCLUDE_NAMESPACE", value_delimiter = ',')]
    exclude_namespaces: Vec<String>,
    /// How long a pull secret read is used before it is read again.
    #[arg(long, env = "PULLCHECK_SECRET_TTL", default_value = "2m", value_parser = humantime::parse_duration)]
    secret_ttl: Duration,
}

impl ClusterArgs {
    async fn client(&self) -> anyhow::Result<(kube::Client, String)> {
        let options = kube::config::KubeConfigOptions { context: self.context.clone(), ..Default::default() };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer().await?,
        };
        let namespace = config.default_namespace.clone();
        Ok((kube::Client::try_from(config)?, namespace))
    }

    fn selection(&self, include_disabled: IncludeDisabled) -> anyhow::Result<Selection> {
        Ok(Selection {
            include_namespaces: Vec::new(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            namespace_selector: LabelSelector::parse(&self.namespace_selector)?,
            include_disabled,
        })
    }
}

#[derive(Args)]
struct ImageSelection {
    /// Skip images matching this regex (reference as written or canonical); repeatable.
    #[arg(long = "ignore-images", env = "PULLCHECK_IGNORE_IMAGES", value_name = "REGEX")]
    ignore: Vec<String>,
    /// Check only images matching one of these regexes; repeatable.
    #[arg(long = "allow-images", env = "PULLCHECK_ALLOW_IMAGES", value_name = "REGEX")]
    allow: Vec<String>,
    /// Platforms every image index must cover (`linux/amd64,linux/arm64`); in a cluster, the
    /// nodes' platforms are used when none is given.
    #[arg(long = "platform", env = "PULLCHECK_PLATFORM", value_delimiter = ',', value_name = "OS/ARCH[/VARIANT]")]
    platforms: Vec<String>,
}

impl ImageSelection {
    fn platforms(&self) -> anyhow::Result<Option<Vec<Platform>>> {
        if self.platforms.is_empty() {
            return Ok(None);
        }
        let parsed = self.platforms.iter().map(|p| p.parse::<Platform>()).collect::<Result<Vec<_>, _>>();
        parsed.map(Some).map_err(anyhow::Error::msg)
    }
}

#[derive(Args)]
struct RegistryArgs {
    /// Registry configuration file (YAML): TLS, credentials, mirrors, budgets per host.
    #[arg(long, env = "PULLCHECK_REGISTRY_CONFIG")]
    registry_config: Option<PathBuf>,
    /// Timeout of one registry request, body included.
    #[arg(long, env = "PULLCHECK_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Further attempts after a 429, 5xx or connection failure.
    #[arg(long, env = "PULLCHECK_RETRIES", default_value_t = 2)]
    retries: u32,
    /// The longest Retry-After a probe waits for before reporting rate_limited.
    #[arg(long, env = "PULLCHECK_MAX_RETRY_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    max_retry_wait: Duration,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

impl RegistryArgs {
    fn client(&self) -> anyhow::Result<RegistryClient> {
        self.client_with(None)
    }

    fn client_with(&self, observer: Option<RequestObserver>) -> anyhow::Result<RegistryClient> {
        let config = match &self.registry_config {
            Some(path) => RegistryConfig::load(path)?,
            None => RegistryConfig::default(),
        };
        let settings = ClientSettings {
            request_timeout: self.request_timeout,
            connect_timeout: self.request_timeout.min(Duration::from_secs(5)),
            retries: self.retries,
            max_retry_wait: self.max_retry_wait,
            ..ClientSettings::default()
        };
        Ok(RegistryClient::with_observer(Arc::new(config), settings, observer))
    }
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pullcheck: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = || EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("warn"));
    match cli.command {
        Command::Version => {
            println!("pullcheck {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check(args) => {
            tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).init();
            match runtime.block_on(check(*args)) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("pullcheck: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run(args) => {
            // `run` logs at info unless told otherwise.
            let filter = if cli.log == "warn" { EnvFilter::new("info") } else { filter() };
            match run(*args, filter, &runtime) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pullcheck: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The controller: telemetry is built and flushed outside the runtime's context (see Telemetry::init).
fn run(args: RunArgs, log_filter: EnvFilter, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let instance_id = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("pullcheck-{}", std::process::id()));
    let resource = ResourceSettings { cluster_name: args.cluster_name.clone(), instance_id };
    let telemetry = Telemetry::init(&ProcessEnv, &resource, runtime.handle())?;
    let spans = tracing_opentelemetry::layer()
        .with_tracer(telemetry.tracer())
        .with_filter(Targets::new().with_target("pullcheck", tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(spans);
    match args.log_format {
        LogFormat::Json => {
            registry.with(fmt::layer().json().with_writer(std::io::stderr).with_filter(log_filter)).init()
        }
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr).with_filter(log_filter)).init(),
    }
    let outcome = runtime.block_on(run_controller(args, &telemetry));
    telemetry.shutdown();
    outcome
}

async fn run_controller(args: RunArgs, telemetry: &Telemetry) -> anyhow::Result<()> {
    let filter = ImageFilter::new(&args.images.ignore, &args.images.allow)?;
    let include = IncludeDisabled::parse(&args.include_disabled).map_err(anyhow::Error::msg)?;
    let selection = args.cluster.selection(include)?;
    let metrics = Arc::new(Metrics::new(&telemetry.meter()));
    let observer_metrics = metrics.clone();
    let observer: RequestObserver = Arc::new(move |host, status| observer_metrics.record_request(host, status));
    let registry = args.registry.client_with(Some(observer))?;
    let (kube_client, _) = args.cluster.client().await?;
    let health_addr = match args.health_addr.as_str() {
        "off" | "" => None,
        addr => Some(addr.parse().map_err(|e| anyhow::anyhow!("--health-addr {addr}: {e}"))?),
    };
    let namespaces = (!args.cluster.namespaces.is_empty()).then(|| args.cluster.namespaces.clone());
    let settings = ControllerSettings {
        schedule: ScheduleSettings {
            window: args.window,
            tick: args.tick,
            failure_retry: args.failure_retry,
            max_in_flight_per_registry: args.max_in_flight_per_registry.max(1),
        },
        namespaces,
        selection,
        filter,
        health_addr,
        secret_ttl: args.cluster.secret_ttl,
        platforms: args.images.platforms()?,
    };
    if !telemetry.exporting {
        tracing::warn!("OTEL_SDK_DISABLED=true: probing, but exporting nothing");
    }
    tracing::info!(window = ?args.window, tick = ?args.tick, "pullcheck run starting");
    controller::run(
        kube_client,
        registry,
        metrics,
        TransitionLog::new(telemetry.logger()),
        settings,
        shutdown_signal(),
    )
    .await;
    Ok(())
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

async fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let filter = ImageFilter::new(&args.images.ignore, &args.images.allow)?;
    let client = args.registry.client()?;
    let include = IncludeDisabled::parse(&args.include_disabled).map_err(anyhow::Error::msg)?;
    let selection = args.cluster.selection(include)?;
    let options = CheckOptions {
        concurrency: args.concurrency,
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        platforms: args.images.platforms()?.unwrap_or_default(),
    };
    let report = if args.filenames.is_empty() {
        check_cluster(&args.cluster, &selection, &filter, &client, options).await?
    } else {
        let inventory = load_paths(&args.filenames);
        let records: Vec<_> = inventory.records.into_iter().filter(|r| selection.admits(r, None)).collect();
        let mut report = run_check(Target::anonymous(&records), &filter, &client, options).await;
        report.input_errors = inventory.errors;
        report
    };
    for error in &report.input_errors {
        eprintln!("pullcheck: {error}");
    }
    for warning in &report.warnings {
        eprintln!("pullcheck: warning: {warning}");
    }
    match args.output {
        Output::Json => println!("{}", report.to_json()),
        Output::Table => print!("{}", report.to_table()),
    }
    Ok(report.exit_code() as u8)
}

/// One pass over a live cluster: list every kind, resolve pull secrets, probe.
async fn check_cluster(
    args: &ClusterArgs,
    selection: &Selection,
    filter: &ImageFilter,
    client: &RegistryClient,
    mut options: CheckOptions,
) -> anyhow::Result<Report> {
    let (kube_client, default_namespace) = args.client().await?;
    let mut platform_warning = None;
    // No --platform: the nodes' platforms.
    if options.platforms.is_empty() {
        match list_node_platforms(&kube_client).await {
            Ok(found) => options.platforms = found,
            Err(e) => platform_warning = Some(format!("{e}; indexes are not checked for the nodes' platforms")),
        }
    }
    let namespaces = if args.all_namespaces {
        None
    } else if args.namespaces.is_empty() {
        Some(vec![default_namespace])
    } else {
        Some(args.namespaces.clone())
    };
    let snapshot = list_workloads(&kube_client, namespaces.as_deref()).await;
    let labels = if selection.namespace_selector.is_empty() {
        Default::default()
    } else {
        list_namespaces(&kube_client).await.map_err(anyhow::Error::msg)?
    };
    let records: Vec<_> =
        snapshot.records.into_iter().filter(|r| selection.admits(r, labels.get(&r.workload.namespace))).collect();
    let secrets = PullSecrets::new(kube_client, args.secret_ttl);
    let (targets, credential_warnings) = Target::with_pull_secrets(&records, &secrets, client.config()).await;
    let mut report = run_check(targets, filter, client, options).await;
    report.warnings = snapshot.problems;
    report.warnings.extend(credential_warnings);
    report.warnings.extend(platform_warning);
    Ok(report)
}
