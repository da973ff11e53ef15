//! The "ideal" fan-out server: the practical ceiling of this machine for the load harness.
//!
//! `GET /sub` answers an SSE response and then writes every frame; `POST /pub` (with content-length)
//! encodes the body into one `data:` frame once and hands the same bytes to every subscriber. No
//! routing, no per-stream queue policy, no HTTP library: just tokio sockets and a broadcast channel.

use bytes::Bytes;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".into())
        .parse()
        .map_err(|e| std::io::Error::other(format!("bad address: {e}")))?;
    let listener = TcpListener::bind(addr).await?;
    let (frames, _) = broadcast::channel::<Bytes>(4096);
    loop {
        let (socket, _) = listener.accept().await?;
        let frames = frames.clone();
        tokio::spawn(async move {
            let _ = serve(socket, frames).await;
        });
    }
}

async fn serve(mut socket: TcpStream, frames: broadcast::Sender<Bytes>) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(512);
    loop {
        // Read one request head.
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            // Read straight into the heap buffer: no 4 KiB array inside every connection's task.
            if socket.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if head.starts_with("get /sub") {
            // A subscriber never sends again: give its request buffer back.
            buf.clear();
            buf.shrink_to_fit();
            let mut rx = frames.subscribe();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n: ok\n\n")
                .await?;
            loop {
                match rx.recv().await {
                    Ok(frame) => socket.write_all(&frame).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            if socket.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = &buf[head_end..head_end + length];
        let mut frame = Vec::with_capacity(body.len() + 8);
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(body);
        frame.extend_from_slice(b"\n\n");
        let _ = frames.send(Bytes::from(frame));
        socket
            .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            .await?;
        buf.drain(..head_end + length);
    }
}
