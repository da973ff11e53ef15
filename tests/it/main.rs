//! Black-box tests: the real sluice binary, real brokers on free ports, real HTTP clients.

mod access;
mod backpressure;
mod bounds;
mod broker_props;
mod broker_rules;
mod browser;
mod cdp;
mod check;
mod clients;
mod cluster;
mod compression;
mod connections;
mod deploy;
mod faults;
mod http;
mod jetstream;
mod mqtt;
mod mqtt_faults;
mod nats;
mod operations;
mod protocols;
mod proxy;
mod reload;
mod resume;
mod support;
mod upgrade;
