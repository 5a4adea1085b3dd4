//! Integration tests: the real server, started on a free port against a
//! fresh store, spoken to over HTTP. One test binary keeps link times down.
//! Every test runs on SQLite and on PostgreSQL (`scripts/test` starts one).

mod harness;

mod agents;
mod cli;
mod compute;
mod compute_dataplane;
mod concurrency;
mod crash;
mod dataplane;
mod identity;
mod instances;
mod kloigos;
mod ledger;
mod networks;
mod observability;
mod openapi;
mod security;
mod seed_examples;
mod serverless_dataplane;
mod system;
mod taskservs;
mod verda;
mod verda_deployments;
mod verda_sdk;
mod verda_secrets;

mod workflows;
