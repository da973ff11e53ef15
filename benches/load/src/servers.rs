//! The servers under test: sluice (memory, NATS, MQTT and SSE-origin routes), nginx + Nchan, nginx
//! `proxy_pass`, and the ideal fan-out server. Each is started on a free loopback port and stopped
//! by its PID.

use crate::nginx::Nginx;
use crate::procfs;
use crate::publish::Publisher;
use sluice_testkit::{free_port, Mosquitto, NatsServer};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ideal,
    SluiceMemory,
    SluiceNats,
    SluiceMqtt,
    Nchan {
        workers: u8,
    },
    /// sluice with an `sse` broker reading the ideal server on 127.0.0.1:`origin`.
    SluiceSse {
        origin: u16,
    },
    /// nginx `proxy_pass` to the ideal server on 127.0.0.1:`origin`, unbuffered.
    NginxProxy {
        workers: u8,
        origin: u16,
    },
}

impl Kind {
    pub fn label(self) -> String {
        match self {
            Kind::Ideal => "ideal".into(),
            Kind::SluiceMemory => "sluice memory".into(),
            Kind::SluiceNats => "sluice nats".into(),
            Kind::SluiceMqtt => "sluice mqtt".into(),
            Kind::Nchan { workers } => format!("nchan {workers}w"),
            Kind::SluiceSse { .. } => "sluice sse".into(),
            Kind::NginxProxy { workers, .. } => format!("nginx proxy_pass {workers}w"),
        }
    }

    pub fn supports_h2(self) -> bool {
        matches!(
            self,
            Kind::SluiceMemory | Kind::SluiceNats | Kind::SluiceMqtt
        )
    }
}

pub struct Running {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub sub_path: String,
    child: Option<Child>,
    nchan_prefix: Option<PathBuf>,
    nginx: Option<Nginx>,
    nats: Option<NatsServer>,
    mosquitto: Option<Mosquitto>,
    scratch: PathBuf,
}

pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn scratch(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "sluice-load-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "{addr} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

impl Running {
    pub async fn start(kind: Kind) -> anyhow::Result<Self> {
        Self::start_with(kind, "", "").await
    }

    /// Like [`Self::start`]; a sluice server gets `server` as more `[server]` keys and `routes` as
    /// more routes on its broker `b`.
    pub async fn start_with(kind: Kind, server: &str, routes: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let dir = scratch(&kind.label().replace(' ', "-"))?;
        let mut running = Running {
            kind,
            addr,
            sub_path: String::new(),
            child: None,
            nchan_prefix: None,
            nginx: None,
            nats: None,
            mosquitto: None,
            scratch: dir.clone(),
        };
        match kind {
            Kind::Ideal => {
                running.sub_path = "/sub".into();
                running.child = Some(
                    Command::new(bin_dir()?.join("ideal"))
                        .arg(addr.to_string())
                        .stdin(Stdio::null())
                        .spawn()?,
                );
            }
            Kind::SluiceMemory | Kind::SluiceNats | Kind::SluiceMqtt | Kind::SluiceSse { .. } => {
                let broker = match kind {
                    Kind::SluiceNats => {
                        let nats = NatsServer::start();
                        let b = format!("[brokers.b]\ntype = \"nats\"\nurl = \"{}\"\n", nats.url());
                        running.nats = Some(nats);
                        b
                    }
                    Kind::SluiceMqtt => {
                        let mqtt = Mosquitto::start();
                        let b = format!(
                            "[brokers.b]\ntype = \"mqtt\"\nurl = \"{}\"\nqos = 0\n",
                            mqtt.url()
                        );
                        running.mosquitto = Some(mqtt);
                        b
                    }
                    Kind::SluiceSse { origin } => {
                        format!(
                            "[brokers.b]\ntype = \"sse\"\nurl = \"http://127.0.0.1:{origin}\"\n"
                        )
                    }
                    _ => "[brokers.b]\ntype = \"memory\"\n".to_owned(),
                };
                // The SSE origin is read, never published to: one route on its one stream.
                let route = match kind {
                    Kind::SluiceSse { .. } => {
                        "path = \"/bench/load\"\nbroker = \"b\"\ntopic = \"/sub\"\n"
                    }
                    Kind::SluiceNats => {
                        "path = \"/bench/{t}\"\nbroker = \"b\"\ntopic = \"bench.{t}\"\npublish = true\n"
                    }
                    _ => "path = \"/bench/{t}\"\nbroker = \"b\"\ntopic = \"bench/{t}\"\npublish = true\n",
                };
                // The subscribers of a compression run ask for an encoding: the route offers them.
                let compress = if crate::compression::encoding().is_some() {
                    "compress = true\n"
                } else {
                    ""
                };
                let config = format!(
                    "[server]\nlisten = \"{addr}\"\nheartbeat = \"60s\"\nmax_streams_per_connection = 1000\n{server}\n\n{broker}\n\
                     [[routes]]\n{route}buffer = 1024\n{compress}{routes}\n"
                );
                let path = dir.join("sluice.toml");
                std::fs::write(&path, config)?;
                running.sub_path = "/bench/load".into();
                running.child = Some(
                    Command::new(bin_dir()?.join("sluice"))
                        .arg("--config")
                        .arg(&path)
                        .env("RUST_LOG", "warn")
                        .stdin(Stdio::null())
                        .spawn()?,
                );
            }
            Kind::Nchan { workers } => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nchan/run-nchan.sh");
                // The script's progress line goes to stderr with the harness's own, not into the table.
                let status = Command::new("bash")
                    .arg(&script)
                    .arg(&dir)
                    .arg(port.to_string())
                    .arg(workers.to_string())
                    .stdout(std::io::stderr())
                    .status()?;
                anyhow::ensure!(status.success(), "starting nginx + nchan failed");
                running.nchan_prefix = Some(dir.clone());
                running.sub_path = "/sub/load".into();
            }
            Kind::NginxProxy { workers, origin } => {
                // Each worker gets the harness's own file limit (the hard limit, raised to at start).
                let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(20_000, |l| l.0);
                running.nginx = Some(Nginx::start(&dir, port, origin, workers, nofile)?);
                running.sub_path = "/bench/load".into();
            }
        }
        wait_for_port(addr).await?;
        Ok(running)
    }

    /// The server's processes (nginx: master and workers).
    pub fn pids(&self) -> Vec<u32> {
        if let Some(child) = &self.child {
            return procfs::family(child.id());
        }
        if let Some(pid) = self.nginx.as_ref().and_then(Nginx::pid) {
            return procfs::family(pid);
        }
        if let Some(prefix) = &self.nchan_prefix {
            if let Some(pid) = std::fs::read_to_string(prefix.join("nginx.pid.master"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                return procfs::family(pid);
            }
        }
        Vec::new()
    }

    /// A publisher for this server's topic.
    pub async fn publisher(&self) -> anyhow::Result<Publisher> {
        match self.kind {
            Kind::Ideal => Publisher::http(self.addr, "/pub").await,
            Kind::SluiceMemory => Publisher::http(self.addr, "/bench/load").await,
            Kind::Nchan { .. } => Publisher::http(self.addr, "/pub/load").await,
            // The origin is published to directly, from an address of its own (see crate::origin).
            Kind::SluiceSse { origin } | Kind::NginxProxy { origin, .. } => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, origin));
                Publisher::http_from(Some(crate::origin::PUBLISHER_IP.into()), addr, "/pub").await
            }
            Kind::SluiceNats => {
                let url = self.nats.as_ref().map(NatsServer::url).unwrap_or_default();
                Publisher::nats(&url, "bench.load").await
            }
            Kind::SluiceMqtt => {
                let port = self.mosquitto.as_ref().map_or(0, Mosquitto::port);
                Ok(Publisher::mqtt(port, "bench/load"))
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut nginx) = self.nginx.take() {
            nginx.stop();
        }
        if let Some(prefix) = self.nchan_prefix.take() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nchan/run-nchan.sh");
            let _ = Command::new("bash")
                .arg(script)
                .arg("stop")
                .arg(&prefix)
                .status();
        }
        self.nats.take();
        self.mosquitto.take();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
