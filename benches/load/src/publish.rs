//! Publishers: HTTP POST (sluice memory route, Nchan, the ideal server), NATS and MQTT clients.

use crate::stats::now_micros;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The payload size of every benchmark message.
pub const PAYLOAD_BYTES: usize = 128;

/// `EPOCH SEQ MICROS` and a telemetry reading as JSON, padded to [`PAYLOAD_BYTES`]: what a
/// dashboard gets (its repeats are what a compressed stream gains on, its numbers what it does not).
pub fn payload(epoch: u64, seq: u64) -> Bytes {
    let mut text = format!(
        r#"{epoch} {seq} {} {{"device":"sensor-{:02}","temperature":{}.{},"humidity":{},"status":"ok"}}"#,
        now_micros(),
        seq % 50,
        15 + seq * 7 % 20,
        seq * 13 % 100,
        30 + seq * 11 % 50
    );
    while text.len() < PAYLOAD_BYTES {
        text.push(' ');
    }
    text.truncate(PAYLOAD_BYTES);
    Bytes::from(text)
}

pub enum Publisher {
    Http {
        sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        addr: SocketAddr,
        path: String,
    },
    Nats {
        client: async_nats::Client,
        subject: String,
    },
    Mqtt {
        client: rumqttc::AsyncClient,
        topic: String,
    },
}

impl Publisher {
    pub async fn http(addr: SocketAddr, path: &str) -> anyhow::Result<Self> {
        Self::http_from(None, addr, path).await
    }

    /// Like [`Self::http`], connecting from `source` when given (so the server can tell this
    /// connection from others by its peer address).
    pub async fn http_from(
        source: Option<IpAddr>,
        addr: SocketAddr,
        path: &str,
    ) -> anyhow::Result<Self> {
        let socket = match source {
            None => tokio::net::TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        socket.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(socket)).await?;
        tokio::spawn(conn);
        Ok(Publisher::Http {
            sender,
            addr,
            path: path.to_owned(),
        })
    }

    pub async fn nats(url: &str, subject: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(url).await?;
        Ok(Publisher::Nats {
            client,
            subject: subject.to_owned(),
        })
    }

    pub fn mqtt(port: u16, topic: &str) -> Self {
        let mut options = rumqttc::MqttOptions::new(
            format!("load-pub-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut event_loop) = rumqttc::AsyncClient::new(options, 10_000);
        tokio::spawn(async move {
            loop {
                if event_loop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Publisher::Mqtt {
            client,
            topic: topic.to_owned(),
        }
    }

    pub async fn send(&mut self, body: Bytes) -> anyhow::Result<()> {
        match self {
            Publisher::Http { sender, addr, path } => {
                sender.ready().await?;
                let request = http::Request::post(path.as_str())
                    .header("host", addr.to_string())
                    .body(Full::new(body))?;
                let response = sender.send_request(request).await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "publish answered {}",
                    response.status()
                );
                // Read the (empty or short) body so the connection can be reused.
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                Ok(())
            }
            Publisher::Nats { client, subject } => {
                Ok(client.publish(subject.clone(), body).await?)
            }
            Publisher::Mqtt { client, topic } => Ok(client
                .publish_bytes(topic.clone(), rumqttc::QoS::AtMostOnce, false, body)
                .await?),
        }
    }
}
