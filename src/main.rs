//! The `pullcheck` command line: flags parsed to typed values, converted once to the library's
//! settings, exit codes mapped. Everything else is in the library.

#![forbid(unsafe_code)]
// Nothing from outside may panic the process: errors are values. Tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use regex::Regex;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use pullcheck::check::{CheckSettings, check_cluster, check_files};
use pullcheck::config::RegistryConfig;
use pullcheck::config::hosts::HostsDir;
use pullcheck::config::registries_conf::RegistriesConf;
use pullcheck::controller::leader::LeaderSettings;
use pullcheck::controller::{self, ControllerSettings};
use pullcheck::credentials::{CredentialProviders, TokenProviders};
use pullcheck::inventory::selection::{DisabledKind, ImageFilter, IncludeDisabled, Selection};
use pullcheck::inventory::selector::LabelSelector;
use pullcheck::platform::Platform;
use pullcheck::registry::{ClientSettings, RegistryClient, RequestObserver};
use pullcheck::report::visible;
use pullcheck::schedule::ScheduleSettings;
use pullcheck::sources::cluster::{
    CLUSTER_UID_TIMEOUT, Connection, DEFAULT_PAGE_SIZE, cluster_uid_unknown, connect, kube_system_uid,
};
use pullcheck::telemetry::logs::TransitionLog;
use pullcheck::telemetry::metrics::Metrics;
use pullcheck::telemetry::otlp::ProcessEnv;
use pullcheck::telemetry::{ClusterUidSource, ResourceSettings, Telemetry};

/// jemalloc unless built with `--no-default-features`: it returns what a sync or a burst of
/// watch events freed, where glibc's arenas keep it (docs/architecture.md, "Footprint").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Can every image your Kubernetes workloads reference still be pulled?
#[derive(Parser)]
#[command(name = "pullcheck", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter for stderr (tracing syntax: `info`, `pullcheck=debug`); default `warn` for
    /// `check`, `info` for `run`.
    #[arg(long, env = "PULLCHECK_LOG", global = true, value_parser = parse_log_filter)]
    log: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the cluster and keep every image probed over a window, pushing OpenTelemetry (OTLP).
    Run(Box<RunArgs>),
    /// Probe every image of a set of manifests, or of a cluster, once and report (exit 0 all available, 1 not, 2 input error, nothing found or a kind not listed).
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
    /// Every namespace.
    #[arg(short = 'A', long, env = "PULLCHECK_ALL_NAMESPACES", conflicts_with = "namespaces")]
    all_namespaces: bool,
    /// These namespaces (repeatable); default: the kubeconfig context's namespace, as kubectl.
    #[arg(short = 'n', long = "namespace", env = "PULLCHECK_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[arg(short = 'o', long, env = "PULLCHECK_OUTPUT", value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    selection: SelectionArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Probes in flight at once over all registries.
    #[arg(long, env = "PULLCHECK_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// No progress line on stderr, even on a terminal.
    #[arg(long, env = "PULLCHECK_NO_PROGRESS")]
    no_progress: bool,
    /// Go on when some kinds cannot be listed (unreachable, 401, RBAC, API errors), with
    /// warnings, instead of exit 2.
    #[arg(long, env = "PULLCHECK_ALLOW_PARTIAL")]
    allow_partial: bool,
    /// Finding no workload (an empty directory or render, an empty namespace) is not exit 2.
    #[arg(long, env = "PULLCHECK_ALLOW_EMPTY")]
    allow_empty: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Every namespace: what `run` watches unless `-n` names some.
    #[arg(short = 'A', long, env = "PULLCHECK_ALL_NAMESPACES", conflicts_with = "namespaces")]
    all_namespaces: bool,
    /// Watch only these namespaces (repeatable; for RBAC granted namespace by namespace);
    /// default: every namespace.
    #[arg(short = 'n', long = "namespace", env = "PULLCHECK_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    selection: SelectionArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Every image is probed once per window.
    #[arg(long, env = "PULLCHECK_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How often the scheduler starts a batch.
    #[arg(long, env = "PULLCHECK_TICK", default_value = "15s", value_parser = humantime::parse_duration)]
    tick: Duration,
    /// A probe that failed transiently is repeated after this; a new `absent` or refused
    /// credential is confirmed once after it.
    #[arg(long, env = "PULLCHECK_FAILURE_RETRY", default_value = "1m", value_parser = humantime::parse_duration)]
    failure_retry: Duration,
    /// Probes in flight per registry; a slow registry holds no more.
    #[arg(long, env = "PULLCHECK_MAX_IN_FLIGHT_PER_REGISTRY", default_value_t = 16)]
    max_in_flight_per_registry: usize,
    /// A kind RBAC forbids is tried again this often: granting it back needs no restart.
    #[arg(long, env = "PULLCHECK_RBAC_RECHECK", default_value = "5m", value_parser = humantime::parse_duration)]
    rbac_recheck: Duration,
    /// Address of /healthz and /readyz (`off` for none).
    #[arg(long, env = "PULLCHECK_HEALTH_ADDR", default_value = "0.0.0.0:8080", value_parser = parse_health_addr)]
    health_addr: HealthAddr,
    /// Log lines on stderr as `text` or `json`.
    #[arg(long, env = "PULLCHECK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// `k8s.cluster.name` on the resource (OTEL_RESOURCE_ATTRIBUTES can set it too).
    #[arg(long, env = "PULLCHECK_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// `k8s.cluster.uid` on the resource; default: the kube-system namespace's uid, read at start
    /// (RBAC: get namespaces/kube-system), or OTEL_RESOURCE_ATTRIBUTES's. `none`: not looked up.
    #[arg(long, env = "PULLCHECK_CLUSTER_UID", value_name = "UID|none")]
    cluster_uid: Option<String>,
    #[command(flatten)]
    leader: LeaderArgs,
}

/// Leader election, with the flags every Kubernetes controller uses.
#[derive(Args)]
struct LeaderArgs {
    /// Run several replicas: only the one holding the Lease probes and exports image series.
    #[arg(long, env = "PULLCHECK_LEADER_ELECT")]
    leader_elect: bool,
    /// How long a lease lasts after its last renewal before a standby may take it.
    #[arg(long, env = "PULLCHECK_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    leader_elect_lease_duration: Duration,
    /// A leader that could not renew for this long stops leading (less than the lease duration).
    #[arg(long, env = "PULLCHECK_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often the lease is renewed or tried for.
    #[arg(long, env = "PULLCHECK_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    leader_elect_retry_period: Duration,
    /// The Lease's name.
    #[arg(long, env = "PULLCHECK_LEADER_ELECT_RESOURCE_NAME", default_value = "pullcheck")]
    leader_elect_resource_name: String,
    /// The Lease's namespace (default: the pod's own, from POD_NAMESPACE or the service account).
    #[arg(long, env = "PULLCHECK_LEADER_ELECT_RESOURCE_NAMESPACE")]
    leader_elect_resource_namespace: Option<String>,
}

impl LeaderArgs {
    /// The election's settings, when asked for. `context_namespace`: the kubeconfig's.
    fn settings(&self, context_namespace: &str) -> anyhow::Result<Option<LeaderSettings>> {
        if !self.leader_elect {
            return Ok(None);
        }
        if self.leader_elect_renew_deadline >= self.leader_elect_lease_duration {
            anyhow::bail!("--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration");
        }
        if self.leader_elect_retry_period >= self.leader_elect_renew_deadline {
            anyhow::bail!("--leader-elect-retry-period must be shorter than --leader-elect-renew-deadline");
        }
        let namespace = self
            .leader_elect_resource_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| context_namespace.to_string());
        Ok(Some(LeaderSettings {
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
            name: self.leader_elect_resource_name.clone(),
            namespace,
            identity: leader_identity(),
        }))
    }
}

/// `POD_NAME` from the downward API, else the host's name.
fn pod_name() -> Option<String> {
    std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).ok().filter(|n| !n.is_empty())
}

/// The pod name (or the host's) and a per-process suffix: two processes never share one.
fn leader_identity() -> String {
    let pod = pod_name().unwrap_or_else(|| "pullcheck".to_string());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{pod}_{:x}{:05x}", std::process::id(), nanos & 0xfffff)
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// `--health-addr`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
struct HealthAddr(Option<SocketAddr>);

fn parse_health_addr(value: &str) -> Result<HealthAddr, String> {
    match value.trim() {
        "off" | "" => Ok(HealthAddr(None)),
        addr => {
            addr.parse().map(|a| HealthAddr(Some(a))).map_err(|e| format!("{e} (an address like 0.0.0.0:8080, or off)"))
        }
    }
}

/// Checked here so that a typo is an error at start, not a silently ignored filter.
fn parse_log_filter(value: &str) -> Result<String, String> {
    EnvFilter::try_new(value).map(|_| value.to_string()).map_err(|e| e.to_string())
}

/// How the cluster is reached.
#[derive(Args)]
struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then the in-cluster service account).
    #[arg(long, env = "PULLCHECK_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, env = "PULLCHECK_CONTEXT")]
    context: Option<String>,
    /// How long a pull secret read is used before it is read again.
    #[arg(long, env = "PULLCHECK_SECRET_TTL", default_value = "2m", value_parser = humantime::parse_duration)]
    secret_ttl: Duration,
    /// Objects per page when listing workloads. A page is held whole while it is read: smaller
    /// pages lower the memory peak at start-up, larger ones need fewer requests.
    #[arg(long, env = "PULLCHECK_LIST_PAGE_SIZE", default_value_t = DEFAULT_PAGE_SIZE, value_parser = clap::value_parser!(u32).range(1..))]
    list_page_size: u32,
    /// How long a kubeconfig `exec` credential plugin may take to print its credential before
    /// pullcheck gives up with an error.
    #[arg(long, env = "PULLCHECK_KUBE_EXEC_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    kube_exec_timeout: Duration,
}

impl ClusterArgs {
    /// The client with the API server's URL, for `check` to name it.
    async fn connection(&self) -> anyhow::Result<Connection> {
        let connection = connect(self.kubeconfig.as_deref(), self.context.as_deref(), self.kube_exec_timeout).await?;
        Ok(Connection { page_size: self.list_page_size, ..connection })
    }
}

/// Which workloads and images are checked.
#[derive(Args)]
struct SelectionArgs {
    /// Only namespaces whose labels match (Kubernetes selector syntax: `team in (a,b),!skip`).
    #[arg(long, env = "PULLCHECK_NAMESPACE_SELECTOR", default_value = "", value_parser = LabelSelector::parse)]
    namespace_selector: LabelSelector,
    /// Leave these namespaces out (repeatable).
    #[arg(long = "exclude-namespace", env = "PULLCHECK_EXCLUDE_NAMESPACE", value_delimiter = ',')]
    exclude_namespaces: Vec<String>,
    /// Also check workloads scaled to zero or suspended, of these kinds (`Deployment,CronJob`) or `all`.
    #[arg(long, env = "PULLCHECK_INCLUDE_DISABLED", value_delimiter = ',', value_name = "KIND")]
    include_disabled: Vec<DisabledKind>,
    /// Skip images matching this regex (reference as written or canonical); repeatable.
    #[arg(long = "ignore-images", env = "PULLCHECK_IGNORE_IMAGES", value_name = "REGEX")]
    ignore: Vec<Regex>,
    /// Check only images matching one of these regexes; repeatable.
    #[arg(long = "allow-images", env = "PULLCHECK_ALLOW_IMAGES", value_name = "REGEX")]
    allow: Vec<Regex>,
    /// Platforms every image index must cover (`linux/amd64,linux/arm64`); in a cluster, the
    /// nodes' platforms are used when none is given.
    #[arg(long = "platform", env = "PULLCHECK_PLATFORM", value_delimiter = ',', value_name = "OS/ARCH[/VARIANT]")]
    platforms: Vec<Platform>,
}

impl SelectionArgs {
    fn selection(&self) -> Selection {
        Selection {
            include_namespaces: Vec::new(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            namespace_selector: self.namespace_selector.clone(),
            include_disabled: IncludeDisabled::new(&self.include_disabled),
            images: ImageFilter::new(self.ignore.clone(), self.allow.clone()),
        }
    }

    /// `None` when no `--platform` was given.
    fn platforms(&self) -> Option<Vec<Platform>> {
        (!self.platforms.is_empty()).then(|| self.platforms.clone())
    }
}

/// How registries are reached.
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
    /// containerd's registry hosts directory (its `config_path`, e.g. /etc/containerd/certs.d):
    /// `<host>/hosts.toml` mirrors, CAs and headers, as the nodes use them.
    #[arg(long, env = "PULLCHECK_HOSTS_DIR", value_name = "DIR")]
    hosts_dir: Option<PathBuf>,
    /// CRI-O's containers-registries.conf(5) (e.g. /etc/containers/registries.conf), with the
    /// `registries.conf.d/*.conf` beside it: prefixes, mirrors, insecure and blocked registries.
    /// A node runs containerd or CRI-O: not with --hosts-dir.
    #[arg(long, env = "PULLCHECK_REGISTRIES_CONF", value_name = "FILE", conflicts_with = "hosts_dir")]
    registries_conf: Option<PathBuf>,
    /// CRI-O's per-host certificates (/etc/containers/certs.d, /etc/docker/certs.d):
    /// `<host[:port]>/*.crt` CAs, `*.cert` + `*.key` client certificates. Repeatable (env:
    /// comma-separated); for a host, the first directory that has it is used.
    #[arg(
        long,
        env = "PULLCHECK_CONTAINERS_CERTS_DIR",
        value_name = "DIR",
        value_delimiter = ',',
        requires = "registries_conf"
    )]
    containers_certs_dir: Vec<PathBuf>,
    /// kubelet's CredentialProviderConfig file: node credentials from plugins (ECR, GAR, ACR).
    #[arg(
        long,
        env = "PULLCHECK_IMAGE_CREDENTIAL_PROVIDER_CONFIG",
        value_name = "FILE",
        requires = "image_credential_provider_bin_dir"
    )]
    image_credential_provider_config: Option<PathBuf>,
    /// The directory holding the plugins the provider config names.
    #[arg(
        long,
        env = "PULLCHECK_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR",
        value_name = "DIR",
        requires = "image_credential_provider_config"
    )]
    image_credential_provider_bin_dir: Option<PathBuf>,
    /// Run providers with `tokenAttributes` (KEP-4412) per workload, with a token of its service
    /// account requested from the API server (RBAC: create serviceaccounts/token). Off: they are
    /// refused. See docs/credential-providers.md.
    #[arg(long, env = "PULLCHECK_SERVICE_ACCOUNT_TOKEN_PROVIDERS")]
    service_account_token_providers: bool,
}

impl RegistryArgs {
    /// `max_pause`: the longest a 429 pauses a repository and its registry (`run`: the window).
    /// `with_cluster`: workloads come from a cluster, which can issue service account tokens.
    fn client(
        &self,
        observer: Option<RequestObserver>,
        max_pause: Duration,
        with_cluster: bool,
    ) -> anyhow::Result<RegistryClient> {
        let mut config = match &self.registry_config {
            Some(path) => RegistryConfig::load(path)?,
            None => RegistryConfig::default(),
        };
        if let Some(dir) = &self.hosts_dir {
            config = config.with_hosts_dir(HostsDir::load(dir)?);
        }
        if let Some(file) = &self.registries_conf {
            config = config.with_registries_conf(RegistriesConf::load(file, &self.containers_certs_dir)?);
        }
        if let (Some(file), Some(bin_dir)) =
            (&self.image_credential_provider_config, &self.image_credential_provider_bin_dir)
        {
            // A plugin gets as long as one registry request: it stands in for one.
            let token_providers = match (self.service_account_token_providers, with_cluster) {
                (false, _) => TokenProviders::Refused,
                (true, true) => TokenProviders::PerWorkload,
                (true, false) => TokenProviders::NoCluster,
            };
            let providers =
                CredentialProviders::load(file, bin_dir, self.request_timeout)?.with_token_providers(token_providers);
            config = config.with_providers(providers);
        }
        let settings = ClientSettings {
            request_timeout: self.request_timeout,
            connect_timeout: self.request_timeout.min(Duration::from_secs(5)),
            retries: self.retries,
            max_retry_wait: self.max_retry_wait,
            max_pause,
            ..ClientSettings::default()
        };
        Ok(RegistryClient::with_observer(Arc::new(config), settings, observer))
    }
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // One thread: a request's or a watch event's wake-ups stay on it, with no futex hand-offs
    // between workers and no contention for jemalloc's one arena (docs/architecture.md, "At
    // Kubernetes' limits").
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pullcheck: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command {
        Command::Version => {
            println!("pullcheck {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Check(args) => {
            let filter = log_filter(cli.log.as_deref(), CHECK_LOG_DEFAULT);
            tracing_subscriber::registry().with(stderr_layer(LogFormat::Text).with_filter(filter)).init();
            runtime.block_on(check(*args))
        }
        Command::Run(args) => run(*args, log_filter(cli.log.as_deref(), RUN_LOG_DEFAULT), &runtime).map(|()| 0),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pullcheck: {}", visible(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// `check`'s stderr by default: warnings, but not kube's own line for each failed request —
/// `check` says what went wrong once per cause (`cannot reach …`), and `--log` brings it back.
const CHECK_LOG_DEFAULT: &str = "warn,kube_client::client::builder=off";

/// `run`'s stderr by default: the watchers say each cause once (docs/operations.md, "API server
/// faults"); kube's line per failed request and kube-runtime's dump of each 403 would repeat it
/// on every retry. `--log` brings them back.
const RUN_LOG_DEFAULT: &str = "info,kube_client::client::builder=off,kube_runtime::watcher=error";

fn log_filter(given: Option<&str>, default: &str) -> EnvFilter {
    EnvFilter::try_new(given.unwrap_or(default)).unwrap_or_else(|_| EnvFilter::new(default))
}

/// Log lines on stderr; colour only on a terminal, and never with `NO_COLOR` set (no-color.org).
fn stderr_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    match format {
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Text => fmt::layer().with_ansi(colour).with_writer(std::io::stderr).boxed(),
    }
}

async fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let client = args.registry.client(None, ClientSettings::default().max_pause, args.filenames.is_empty())?;
    let selection = args.selection.selection();
    let settings = CheckSettings {
        concurrency: args.concurrency,
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        platforms: args.selection.platforms(),
        allow_partial: args.allow_partial,
        allow_empty: args.allow_empty,
    };
    let report = if args.filenames.is_empty() {
        let cluster = args.cluster.connection().await?;
        let namespaces = match (args.all_namespaces, args.namespaces) {
            (true, _) => None,
            (false, listed) if listed.is_empty() => Some(vec![cluster.namespace.clone()]),
            (false, listed) => Some(listed),
        };
        check_cluster(&cluster, namespaces.as_deref(), &selection, args.cluster.secret_ttl, &client, &settings).await
    } else {
        check_files(&args.filenames, &selection, &client, &settings).await
    };
    // Input errors, errors and notes carry names and references from the inputs.
    for error in &report.input_errors {
        eprintln!("pullcheck: {}", visible(&error.to_string()));
    }
    for error in &report.errors {
        eprintln!("pullcheck: {}", visible(error));
    }
    for note in &report.notes {
        eprintln!("pullcheck: warning: {}", visible(note));
    }
    match args.output {
        Output::Json => match report.write_json(std::io::stdout().lock()) {
            // A reader that stopped reading (`| head`) wanted no more of it.
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => anyhow::bail!("cannot write the report: {e}"),
            _ => {}
        },
        Output::Table => print!("{}", report.to_table()),
    }
    Ok(report.exit_code())
}

/// The controller: telemetry is built outside the runtime's context (see Telemetry::init) and
/// flushed off it.
fn run(args: RunArgs, log_filter: EnvFilter, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let instance_id = pod_name().unwrap_or_else(|| format!("pullcheck-{}", std::process::id()));
    // The resource is fixed once telemetry starts, so the cluster's uid is read before it.
    let connection = runtime.block_on(args.cluster.connection())?;
    let (cluster_uid, uid_unknown) = match ClusterUidSource::choose(args.cluster_uid.as_deref(), &ProcessEnv) {
        ClusterUidSource::Given(uid) => (Some(uid), None),
        ClusterUidSource::ResourceAttributes | ClusterUidSource::Off => (None, None),
        ClusterUidSource::LookUp => match runtime.block_on(kube_system_uid(&connection.client, CLUSTER_UID_TIMEOUT)) {
            Ok(uid) => (Some(uid), None),
            Err(cause) => (None, Some(cluster_uid_unknown(&cause))),
        },
    };
    let resource = ResourceSettings { cluster_name: args.cluster_name.clone(), cluster_uid, instance_id };
    let telemetry = Telemetry::init(&ProcessEnv, &resource, runtime.handle())?;
    // Spans carry what the semantic conventions name, not the bridge's bookkeeping (source
    // location, thread, target, busy/idle times): each is paid for on every probe at the backend.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(telemetry.tracer())
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target("pullcheck", tracing::Level::INFO));
    tracing_subscriber::registry().with(spans).with(stderr_layer(args.log_format).with_filter(log_filter)).init();
    if let Some(warning) = uid_unknown {
        tracing::warn!("{}", visible(&warning));
    }
    let outcome = runtime.block_on(run_controller(args, connection, &telemetry));
    flush(&telemetry, runtime);
    outcome
}

/// The last export, on a thread of its own (outside the runtime's context, as the HTTP
/// exporters' blocking client needs) while this one drives the runtime: a gRPC exporter's
/// channel is a task on it, and on one thread nothing else would run that task.
fn flush(telemetry: &Telemetry, runtime: &tokio::runtime::Runtime) {
    let (done, flushed) = tokio::sync::oneshot::channel();
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new().name("flush".into()).spawn_scoped(scope, || {
            telemetry.shutdown();
            let _ = done.send(());
        });
        match spawned {
            Ok(_) => {
                let _ = runtime.block_on(flushed);
            }
            Err(e) => {
                // Here, a gRPC export waits out its timeout.
                eprintln!("pullcheck: flushing telemetry at shutdown on the main thread: {e}");
                telemetry.shutdown();
            }
        }
    });
}

async fn run_controller(args: RunArgs, connection: Connection, telemetry: &Telemetry) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(&telemetry.meter()));
    let observer_metrics = metrics.clone();
    let observer: RequestObserver = Arc::new(move |request| observer_metrics.record_request(request));
    let registry = args.registry.client(Some(observer), args.window, true)?;
    let Connection { client: kube_client, namespace: context_namespace, page_size, .. } = connection;
    let leader_election = args.leader.settings(&context_namespace)?;
    let settings = ControllerSettings {
        schedule: ScheduleSettings {
            window: args.window,
            tick: args.tick,
            failure_retry: args.failure_retry,
            max_in_flight_per_registry: args.max_in_flight_per_registry.max(1),
        },
        // `-A` is the default of `run`; it is accepted so that flags copied from `check` work.
        namespaces: (!args.namespaces.is_empty()).then(|| args.namespaces.clone()),
        selection: args.selection.selection(),
        health_addr: args.health_addr.0,
        secret_ttl: args.cluster.secret_ttl,
        list_page_size: page_size,
        rbac_recheck: args.rbac_recheck,
        platforms: args.selection.platforms(),
        leader_election,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pullcheck").chain(args.iter().copied()))
    }

    #[test]
    fn an_explicit_log_level_is_honoured() {
        let cli = parse(&["run", "--log", "warn"]).expect("valid");
        assert_eq!(log_filter(cli.log.as_deref(), RUN_LOG_DEFAULT).to_string(), "warn");
        let cli = parse(&["run"]).expect("valid");
        assert_eq!(
            log_filter(cli.log.as_deref(), RUN_LOG_DEFAULT).to_string(),
            EnvFilter::new(RUN_LOG_DEFAULT).to_string(),
            "run's default"
        );
        assert!(RUN_LOG_DEFAULT.starts_with("info,"), "run logs at info");
        assert!(parse(&["check", "-f", "x", "--log", "pullcheck=loud"]).is_err(), "a bad filter is an error");
    }

    #[test]
    fn flags_parse_to_types() {
        let cli = parse(&[
            "run",
            "--platform",
            "linux/amd64,linux/arm64/v8",
            "--ignore-images",
            "^docker\\.io/",
            "--include-disabled",
            "cronjob,all",
            "--namespace-selector",
            "team in (a,b)",
            "--health-addr",
            "off",
        ])
        .expect("valid");
        let Command::Run(run) = cli.command else { panic!("run") };
        assert_eq!(run.selection.platforms().map(|p| p.len()), Some(2));
        assert!(run.health_addr.0.is_none());
        assert!(!run.selection.selection().images.admits("docker.io/library/nginx", None));
        for bad in [
            ["run", "--platform", "linux"],
            ["run", "--ignore-images", "("],
            ["run", "--include-disabled", "Service"],
            ["run", "--health-addr", "localhost"],
            ["run", "--namespace-selector", "a in"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cluster_uid_flag() {
        let Command::Run(run) = parse(&["run", "--cluster-uid", "none"]).expect("valid").command else { panic!("run") };
        assert_eq!(ClusterUidSource::choose(run.cluster_uid.as_deref(), &ProcessEnv), ClusterUidSource::Off);
        let Command::Run(run) = parse(&["run", "--cluster-uid", "1b2c"]).expect("valid").command else { panic!("run") };
        assert_eq!(run.cluster_uid.as_deref(), Some("1b2c"));
        assert!(parse(&["check", "-A", "--cluster-uid", "1b2c"]).is_err(), "check exports no resource");
    }

    #[test]
    fn leader_election_flags() {
        let Command::Run(run) = parse(&["run"]).expect("valid").command else { panic!("run") };
        assert!(run.leader.settings("ns").expect("valid").is_none(), "off by default");
        let Command::Run(run) =
            parse(&["run", "--leader-elect", "--leader-elect-resource-namespace", "ops"]).expect("valid").command
        else {
            panic!("run")
        };
        let settings = run.leader.settings("ns").expect("valid").expect("on");
        assert_eq!((settings.name.as_str(), settings.namespace.as_str()), ("pullcheck", "ops"));
        assert_eq!(settings.lease_duration, Duration::from_secs(15));
        let suffix = format!("_{:x}", std::process::id());
        assert!(settings.identity.contains(&suffix), "the process's own suffix: {}", settings.identity);
        let Command::Run(run) =
            parse(&["run", "--leader-elect", "--leader-elect-renew-deadline", "20s"]).expect("valid").command
        else {
            panic!("run")
        };
        assert!(run.leader.settings("ns").is_err(), "a renew deadline past the lease duration is refused");
    }

    #[test]
    fn check_flags_for_partial_and_empty_answers() {
        let Command::Check(check) = parse(&["check", "-A", "--allow-partial", "--allow-empty"]).expect("valid").command
        else {
            panic!("check")
        };
        assert!(check.allow_partial && check.allow_empty);
        let Command::Check(check) = parse(&["check", "-f", "x"]).expect("valid").command else { panic!("check") };
        assert!(!check.allow_partial && !check.allow_empty, "a check that could not look fails by default");
        assert!(parse(&["run", "--allow-empty"]).is_err(), "check's flags only");
    }

    #[test]
    fn run_and_check_agree_on_namespaces() {
        let Command::Run(run) = parse(&["run", "-A"]).expect("valid").command else { panic!("run") };
        assert!(run.all_namespaces && run.namespaces.is_empty());
        assert!(parse(&["run", "-A", "-n", "a"]).is_err(), "-A and -n conflict in run as in check");
        assert!(parse(&["check", "-A", "-n", "a"]).is_err());
    }
}
