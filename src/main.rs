//! The `pullcheck` command line: parses flags, calls the library, maps exit codes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use pullcheck::check::{CheckOptions, ImageFilter, Target, run_check};
use pullcheck::config::RegistryConfig;
use pullcheck::inventory::files::load_paths;
use pullcheck::registry::{ClientSettings, RegistryClient};

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
    /// Probe every image of a set of manifests once and report (exit 0 all available, 1 not, 2 input error).
    Check(CheckArgs),
    /// Print the version.
    Version,
}

#[derive(Args)]
struct CheckArgs {
    /// Manifest files or directories (recursive: .yaml, .yml, .json); `-` reads stdin.
    #[arg(short = 'f', long = "filename", env = "PULLCHECK_FILENAME", value_delimiter = ',', required = true)]
    filenames: Vec<PathBuf>,
    #[arg(short = 'o', long, env = "PULLCHECK_OUTPUT", value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    images: ImageSelection,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Probes in flight at once over all registries.
    #[arg(long, env = "PULLCHECK_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// No progress line on stderr, even on a terminal.
    #[arg(long, env = "PULLCHECK_NO_PROGRESS")]
    no_progress: bool,
}

#[derive(Args)]
struct ImageSelection {
    /// Skip images matching this regex (reference as written or canonical); repeatable.
    #[arg(long = "ignore-images", env = "PULLCHECK_IGNORE_IMAGES", value_name = "REGEX")]
    ignore: Vec<String>,
    /// Check only images matching one of these regexes; repeatable.
    #[arg(long = "allow-images", env = "PULLCHECK_ALLOW_IMAGES", value_name = "REGEX")]
    allow: Vec<String>,
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
        Ok(RegistryClient::new(Arc::new(config), settings))
    }
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pullcheck: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Version => {
            println!("pullcheck {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check(args) => match runtime.block_on(check(args)) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("pullcheck: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

async fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let filter = ImageFilter::new(&args.images.ignore, &args.images.allow)?;
    let client = args.registry.client()?;
    let inventory = load_paths(&args.filenames);
    for error in &inventory.errors {
        eprintln!("pullcheck: {error}");
    }
    let targets = inventory.containers.iter().map(|container| Target { container, credential: None }).collect();
    let options =
        CheckOptions { concurrency: args.concurrency, progress: !args.no_progress && std::io::stderr().is_terminal() };
    let mut report = run_check(targets, &filter, &client, options).await;
    report.input_errors = inventory.errors;
    match args.output {
        Output::Json => println!("{}", report.to_json()),
        Output::Table => print!("{}", report.to_table()),
    }
    Ok(report.exit_code() as u8)
}
