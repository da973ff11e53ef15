//! Black-box tests: the real sluice binary, real brokers on free ports, real HTTP clients.

mod access;
mod backpressure;
mod browser;
mod cdp;
mod check;
mod connections;
mod http;
mod jetstream;
mod mqtt;
mod nats;
mod protocols;
mod resume;
mod support;
