//! Command-line interface: argument definitions and dispatch. `anyhow` lives here only.

mod admin;
mod bench;
mod check;
mod config_file;
mod consume;
mod definitions;
mod dlq;
mod handler;
mod plugin;
mod plugin_build;
mod plugin_new;
mod plugin_test;
mod plugin_trial;
mod publish;
mod route;
mod serve;
mod table;
mod user;
mod vhost;

use clap::{Parser, Subcommand};

use broker::message::Headers;

pub const DEFAULT_SERVER: &str = "ws://127.0.0.1:6789";

#[derive(Parser)]
#[command(
    name = "broker",
    version,
    about = "A message broker with WebAssembly routing plugins"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// Verify a data directory offline: every page's checksum, every record decoded.
    Check(check::CheckArgs),
    /// Publish messages and wait for their confirms.
    Publish(publish::PublishArgs),
    /// Show where a message would go, without publishing it: the plugin version that
    /// decides, the bindings that match, the queues that would receive it.
    Route(route::RouteArgs),
    /// Print messages from a queue as JSON lines, acking each.
    Consume(consume::ConsumeArgs),
    /// List queues with ready / unacked / consumer counts.
    Queues(admin::ServerArg),
    /// Manage users (administrators).
    #[command(subcommand)]
    User(user::User),
    /// Manage virtual hosts (administrators).
    #[command(subcommand)]
    Vhost(vhost::Vhost),
    /// Manage users' permissions in virtual hosts (administrators).
    #[command(subcommand)]
    Permissions(vhost::Permissions),
    /// List exchanges with their type and routed / unroutable counts.
    Exchanges(admin::ServerArg),
    /// List bindings.
    Bindings(admin::ServerArg),
    /// List client connections with their consumers.
    Connections(admin::ServerArg),
    /// Declare a queue or an exchange.
    #[command(subcommand)]
    Declare(admin::Declare),
    /// Load a RabbitMQ definitions file (exported from RabbitMQ).
    #[command(subcommand)]
    Definitions(definitions::Definitions),
    /// Delete a queue or an exchange.
    #[command(subcommand)]
    Delete(admin::Delete),
    /// Remove all ready messages from a queue.
    Purge(admin::PurgeArgs),
    /// Bind a queue to an exchange.
    Bind(admin::BindArgs),
    /// Remove a binding.
    Unbind(admin::BindArgs),
    /// Manage exchange plugins.
    #[command(subcommand)]
    Plugin(plugin::Plugin),
    /// Inspect a queue's dead letters, or move them back to their original queue.
    Dlq(dlq::DlqArgs),
    /// Measure throughput and latency (see `broker bench --help`).
    Bench(bench::BenchArgs),
    /// Attach, detach and list consumer-side handler plugins on queues.
    #[command(subcommand)]
    Handler(handler::Handler),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(_) => {}
        // It prints each failure itself; the host's warning would repeat it.
        Command::Plugin(plugin::Plugin::Test(_)) => init_logging("error", false),
        _ => init_logging("warn", false),
    }
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Check(args) => check::run(args),
        Command::Publish(args) => publish::run(args).await,
        Command::Route(args) => route::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Queues(args) => admin::queues(args).await,
        Command::User(command) => user::run(command).await,
        Command::Vhost(command) => vhost::run_vhost(command).await,
        Command::Permissions(command) => vhost::run_permissions(command).await,
        Command::Exchanges(args) => admin::exchanges(args).await,
        Command::Bindings(args) => admin::bindings(args).await,
        Command::Connections(args) => admin::connections(args).await,
        Command::Declare(what) => admin::declare(what).await,
        Command::Definitions(what) => definitions::run(what).await,
        Command::Delete(what) => admin::delete(what).await,
        Command::Purge(args) => admin::purge(args).await,
        Command::Bind(args) => admin::bind(args, true).await,
        Command::Unbind(args) => admin::bind(args, false).await,
        Command::Dlq(args) => dlq::run(args).await,
        Command::Plugin(what) => plugin::run(what).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Handler(what) => handler::run(what).await,
    }
}

/// Parses `KEY=VALUE`; VALUE is taken as JSON when it parses (`10`, `true`, `[1,2]`), else
/// as a string.
pub fn parse_key_value(arg: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("`{arg}` is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("`{arg}` has an empty key"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| value.into());
    Ok((key.to_owned(), value))
}

pub fn to_headers(pairs: Vec<(String, serde_json::Value)>) -> Headers {
    pairs.into_iter().collect()
}

/// Logging for every subcommand: `RUST_LOG` wins over `--log`; logs go to stderr so
/// stdout stays clean for data.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (duplicate argument names, ...) over every command:
    /// otherwise they only fire when that command is run.
    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
