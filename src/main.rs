//! The `sluice` command: load and check the configuration, connect the brokers, serve until a signal.

use anyhow::Context;
use clap::Parser;
use pingora::apps::ServerApp;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::protocols::TcpKeepalive;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use sluice::config;
use sluice::connections::{self, Bounded, Connections};
use sluice::http::{Gateway, Routing};
use sluice::hub::Hub;
use sluice::keys::CurrentCertificate;
use sluice::reload::{self, Reloader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// An SSE gateway that streams NATS and MQTT topics to browsers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, default_value = "config.toml")]
    config: PathBuf,
    /// Validate the configuration and exit: 0 when valid, 2 with `PATH:LINE:COLUMN: reason` when not.
    #[arg(long)]
    check: bool,
    /// Print an HS256 token signed with the configured `[auth] jwt_secret_env` secret, and exit.
    #[arg(long)]
    mint_token: bool,
    /// With --mint-token: a topic pattern the token may subscribe to (repeatable).
    #[arg(long, value_name = "PATTERN")]
    subscribe: Vec<String>,
    /// With --mint-token: a topic pattern the token may publish to (repeatable).
    #[arg(long, value_name = "PATTERN")]
    publish: Vec<String>,
    /// With --mint-token: how long the token is valid, from 1s to 1y.
    #[arg(long, default_value = "1h", value_parser = token_ttl)]
    ttl: Duration,
    /// Take the listening sockets over from the running sluice, through `[server] upgrade_socket`;
    /// then send the running one SIGQUIT (README: "Graceful upgrade").
    #[arg(long, short)]
    upgrade: bool,
}

/// `--ttl`: a humantime duration within [`config::TOKEN_TTL_RANGE`].
fn token_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if !config::TOKEN_TTL_RANGE.contains(&ttl) {
        return Err(format!(
            "a token lives from {} to {}",
            humantime::format_duration(*config::TOKEN_TTL_RANGE.start()),
            humantime::format_duration(*config::TOKEN_TTL_RANGE.end())
        ));
    }
    Ok(ttl)
}

/// `--mint-token`: signs a token with the configured HS256 secret.
fn mint_token(cli: &Cli, config: &config::Config) -> Result<String, String> {
    let auth = config
        .auth
        .as_ref()
        .ok_or("the configuration has no [auth] section")?;
    let env = auth.secret_env.as_ref().ok_or(
        "--mint-token signs HS256 tokens with jwt_secret_env; sign RS256/ES256 tokens with your own key",
    )?;
    let secret = std::env::var(env).map_err(|_| format!("{env} is not set"))?;
    sluice::auth::mint(
        secret.as_bytes(),
        &cli.subscribe,
        &cli.publish,
        cli.ttl,
        auth.audience.as_deref(),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        for warning in config.warnings() {
            eprintln!("warning: {warning}");
        }
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    if cli.mint_token {
        return match mint_token(&cli, &config) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot mint a token: {e}");
                ExitCode::from(2)
            }
        };
    }
    if cli.upgrade {
        if let Err(e) = can_upgrade(&config) {
            eprintln!("--upgrade: {e}");
            return ExitCode::from(2);
        }
    }
    sluice::logging::init(config.log_format);
    match run(config, cli.config, cli.upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--upgrade` needs the hand-off socket's path, in a folder that exists (pingora would panic).
fn can_upgrade(config: &config::Config) -> Result<(), String> {
    let socket = config.server.upgrade_socket.as_ref().ok_or(
        "[server] upgrade_socket is not set: the running sluice hands its listening sockets over \
         on that socket (and needs it set when it starts)",
    )?;
    match socket.parent() {
        Some(folder) if !folder.as_os_str().is_empty() && !folder.is_dir() => Err(format!(
            "upgrade_socket {}: no such folder {}",
            socket.display(),
            folder.display()
        )),
        _ => Ok(()),
    }
}

/// Socket options for every listener: bounded kernel send buffers, so a stalled HTTP/1.1 client
/// cannot park megabytes; keepalive probes, so a peer that vanished without closing is found.
fn socket_options() -> TcpSocketOptions {
    let mut options = TcpSocketOptions::default();
    options.tcp_snd_buf = Some(256 * 1024);
    options.tcp_keepalive = Some(TcpKeepalive {
        idle: Duration::from_secs(30),
        interval: Duration::from_secs(10),
        count: 3,
        user_timeout: Duration::from_secs(60),
    });
    options
}

/// Binds every address (with SO_REUSEADDR, as pingora binds) and listens on all of them at once,
/// then releases them: a busy port, or two addresses that cannot both be bound, is reported up front.
/// pingora itself would retry a busy port for 30 s and then fail on a thread of its own.
fn ensure_bindable(addrs: impl IntoIterator<Item = SocketAddr>) -> anyhow::Result<()> {
    let mut held = Vec::new();
    for addr in addrs {
        let domain = match addr {
            SocketAddr::V4(_) => socket2::Domain::IPV4,
            SocketAddr::V6(_) => socket2::Domain::IPV6,
        };
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)
            .context("creating a socket")?;
        socket
            .set_reuse_address(true)
            .context("setting SO_REUSEADDR")?;
        socket
            .bind(&addr.into())
            .and_then(|()| socket.listen(1))
            .with_context(|| format!("cannot listen on {addr}"))?;
        held.push(socket);
    }
    Ok(())
}

/// The listening service, made fatal: if pingora cannot start its listeners (it panics then, on the
/// service's own thread, and would leave the process running without them), sluice exits with
/// status 1 and the reason.
struct MustListen<A> {
    inner: Option<Service<A>>,
    name: String,
    /// Tell systemd `READY=1` once this service listens (the public service does).
    notify_ready: bool,
}

#[async_trait::async_trait]
impl<A: ServerApp + Send + Sync + 'static> pingora::services::Service for MustListen<A> {
    async fn start_service(
        &mut self,
        fds: Option<pingora::server::ListenFds>,
        shutdown: pingora::server::ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        // READY=1 for systemd once every address listens (pingora records each in `fds`).
        let addresses = pingora::services::Service::listen_addresses(&inner);
        if let (true, Some(fds), Some(addresses)) = (self.notify_ready, fds.clone(), addresses) {
            tokio::spawn(sluice::shutdown::notify_when_listening(fds, addresses));
        }
        let run = tokio::spawn(async move {
            pingora::services::Service::start_service(&mut inner, fds, shutdown, listeners_per_fd)
                .await
        });
        // A cancelled task is the runtime shutting down: nothing to report then.
        if let Err(Ok(panic)) = run.await.map_err(|e| e.try_into_panic()) {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            tracing::error!("the listeners could not start: {reason}");
            std::process::exit(1);
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        self.inner
            .as_ref()
            .and_then(pingora::services::Service::threads)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner
            .as_ref()
            .and_then(pingora::services::Service::listen_addresses)
    }
}

/// Per-connection buffers of the cleartext listeners: none. pingora's 64 KiB read buffer pays off
/// for TLS records and proxied bodies, but an SSE connection reads one small request (into pingora's
/// header buffer; h2 has its codec's buffers) and then idles for hours; its writes are whole chunks
/// (one `writev`) or h2 frames (buffered by the h2 codec). Measured with the load harness at 2,000
/// idle HTTP/1.1 streams, the read buffer alone cost about 9 KiB per stream.
fn cleartext_buffers() -> L4BufferSettings {
    L4BufferSettings::unbuffered()
}

/// The client connections the process's file limit can hold (raising the soft limit first), with
/// a warning when `max_connections` promises more.
fn connection_budget(config: &config::Config) -> anyhow::Result<Arc<Connections>> {
    let files = connections::raise_file_limit().context("reading the open-file limit")?;
    tracing::info!(
        file_limit = files.file_limit,
        "at most {} client connections",
        files.connections
    );
    // The default (100,000) is a ceiling most file limits do not reach: only a value the operator
    // chose is worth a warning.
    let chosen = config.server.max_connections != config::DEFAULT_MAX_CONNECTIONS;
    if chosen && config.server.max_connections > files.connections {
        tracing::warn!(
            "max_connections = {} cannot be reached: the open-file limit ({}) holds {} client \
             connections; raise it (e.g. LimitNOFILE= in the systemd unit)",
            config.server.max_connections,
            files.file_limit,
            files.connections
        );
    }
    Ok(Connections::new(
        files.connections,
        config.server.request_timeout,
    ))
}

/// Serves `config` (loaded from `path`, which SIGHUP reads again) until a shutdown signal; with
/// `upgrade`, on the listening sockets of the running sluice.
fn run(config: config::Config, path: PathBuf, upgrade: bool) -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let connections = connection_budget(&config)?;

    // The broker clients' own tasks (the NATS connection, the MQTT event loop) and the simulator
    // run on a runtime of their own, beside pingora's per-service runtimes; a subscription's reader
    // task runs where the stream that made it joined (see `sluice_bridge::Sink` for who calls a
    // sink, per bridge).
    let bridge_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-brokers")
        .enable_all()
        .build()
        .context("starting the broker runtime")?;
    let bridges = bridge_runtime
        .block_on(sluice::brokers::connect_all(&config.brokers))
        .context("connecting brokers")?;
    let simulator = {
        let _on = bridge_runtime.enter();
        reload::start_simulator(&config, &bridges)
    };

    let mut conf = ServerConf {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        // Streams end themselves on shutdown (after a randomised retry:), so little grace is needed.
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(3),
        ..Default::default()
    };
    if let Some(socket) = &config.server.upgrade_socket {
        conf.upgrade_sock = socket.to_string_lossy().into_owned();
    }
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if upgrade {
        // Blocks until the running sluice sends its sockets (on SIGQUIT); pingora exits with status 1
        // if none comes within about 5 s.
        tracing::info!(
            "waiting for the running sluice to hand its listening sockets over on {}: send it SIGQUIT",
            server.configuration.upgrade_sock
        );
        server.bootstrap();
        tracing::info!(
            "took the listening sockets over (pid {})",
            std::process::id()
        );
        sluice::shutdown::notify_main_pid();
    } else {
        server.bootstrap();
        let tls_listen = config.server.tls.iter().flat_map(|t| t.listen.iter());
        let admin_listen = config.admin.iter().map(|a| &a.listen);
        let listen = config.server.listen.iter().chain(tls_listen);
        ensure_bindable(listen.chain(admin_listen).copied())?;
    }

    let routing = Routing::new(config.clone(), bridges, |_| None).map_err(anyhow::Error::msg)?;
    let gateway = Arc::new(Gateway::new(routing, Hub::new(), connections.clone()));
    // Every connection passes through `Bounded` first: pingora gives the phases before a request
    // (the h2c preface, the h2 handshake, an h2 connection without streams) no deadline.
    let mut service = Service::new(
        "sluice".to_owned(),
        Bounded::new(gateway.clone(), connections.clone()),
    );
    for addr in &config.server.listen {
        service.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .tcp_socket_options(socket_options())
                .l4_buffer(cleartext_buffers()),
        );
        tracing::info!("listening on http://{addr} (HTTP/1.1 and h2c)");
    }
    // What every TLS listener serves; a reload replaces it for new handshakes.
    let certificate = config
        .server
        .tls
        .as_ref()
        .map(|tls| Arc::new(CurrentCertificate::new(tls.certified.clone())));
    if let (Some(tls), Some(certificate)) = (&config.server.tls, &certificate) {
        let (cert, key) = (tls.cert.to_string_lossy(), tls.key.to_string_lossy());
        for addr in &tls.listen {
            let mut settings = TlsSettings::intermediate(&cert, &key)
                .map_err(|e| anyhow::anyhow!("TLS certificate {cert} or key {key}: {e}"))?;
            // The pair the configuration loaded and matched; with a resolver set, pingora does
            // not read the files again.
            settings.set_cert_resolver(certificate.clone());
            settings.enable_h2();
            service.add_listener(
                ListenerConfig::tcp(addr.to_string())
                    .tcp_socket_options(socket_options())
                    .tls(settings),
            );
            tracing::info!("listening on https://{addr} (TLS: h2 and HTTP/1.1 by ALPN)");
        }
    }
    server.add_service(MustListen {
        inner: Some(service),
        name: "sluice".to_owned(),
        notify_ready: true,
    });
    if let Some(admin) = &config.admin {
        let app = sluice::admin::Admin::new(gateway.clone(), connections.clone());
        let mut service = Service::new("sluice-admin".to_owned(), app);
        // Metrics, readiness and one status stream per viewer: one thread is plenty.
        service.threads = Some(1);
        service.add_listener(
            ListenerConfig::tcp(admin.listen.to_string()).tcp_socket_options(socket_options()),
        );
        tracing::info!(
            "admin listener on http://{} (metrics, readiness, status)",
            admin.listen
        );
        server.add_service(MustListen {
            inner: Some(service),
            name: "sluice-admin".to_owned(),
            notify_ready: false,
        });
    }
    // SIGHUP reloads the configuration from here on (installed before the listeners open, so no
    // client-visible moment exists where it would still end the process).
    sluice::admin::metrics::global().config_loaded();
    let reloader = Reloader::new(path, gateway, certificate, simulator);
    let shutdown = {
        let _on = bridge_runtime.enter();
        reloader.watch().context("listening for SIGHUP")?;
        let socket = config.server.upgrade_socket.clone();
        sluice::shutdown::TwoStepShutdown::new(socket).context("listening for signals")?
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(shutdown),
    });
    drop(bridge_runtime);
    Ok(())
}
