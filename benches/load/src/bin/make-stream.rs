//! Creates (or updates) a JetStream stream, for `scripts/cluster` and the load harness's storms:
//! `make-stream URL NAME SUBJECT REPLICAS`. Sluice itself never creates streams: operators do.

use async_nats::jetstream::{self, stream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, name, subject, replicas] = args.as_slice() else {
        anyhow::bail!("usage: make-stream URL NAME SUBJECT REPLICAS");
    };
    let client = async_nats::connect(url.as_str()).await?;
    let js = jetstream::new(client);
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        num_replicas: replicas.parse()?,
        max_messages: 100_000,
        ..Default::default()
    };
    js.get_or_create_stream(config).await?;
    println!("stream {name} on {subject}, {replicas} replicas");
    Ok(())
}
