//! `broker definitions import FILE`: a RabbitMQ definitions file (what the management
//! UI's "Export definitions", `rabbitmqadmin export` or `rabbitmqctl export_definitions`
//! write) loaded into this broker, as a client would declare it: vhosts, exchanges,
//! queues, bindings and permissions. Queue and exchange arguments map as they do over
//! AMQP (`x-message-ttl` is `message_ttl`, ...). Users keep their passwords: RabbitMQ's
//! salted SHA-256 and SHA-512 hashes are imported as they are and checked as RabbitMQ
//! checks them. What has no counterpart here is listed as skipped: policies and
//! parameters. Declaring is idempotent, so a file can be imported again.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use broker::auth::Tag;
use broker::message::Headers;
use broker::protocol::{Binding, DeclareExchange, ExchangeBinding, ImportedHash, SetPermissions};
use broker::queue::rabbitmq_arguments;
use broker::{Client, ClientError, QueueOptions};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::admin::ServerArg;

#[derive(Subcommand)]
pub enum Definitions {
    /// Declare what a RabbitMQ definitions file describes (vhosts, exchanges, queues,
    /// bindings, users with their passwords, permissions); policies and parameters are
    /// listed as skipped.
    Import(ImportArgs),
    /// Write this broker's vhosts, exchanges, queues, bindings and permissions as a
    /// RabbitMQ definitions file (users are not written: their password hashes stay here).
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Where to write it (default: standard output).
    file: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The definitions file (JSON, as RabbitMQ exports it).
    file: PathBuf,
    #[command(flatten)]
    server: ServerArg,
}

/// The parts of a RabbitMQ definitions file this reads; the rest is ignored.
#[derive(Deserialize, Default)]
struct File {
    #[serde(default)]
    vhosts: Vec<Named>,
    #[serde(default)]
    users: Vec<User>,
    #[serde(default)]
    permissions: Vec<Permission>,
    #[serde(default)]
    exchanges: Vec<Exchange>,
    #[serde(default)]
    queues: Vec<Queue>,
    #[serde(default)]
    bindings: Vec<Bound>,
    #[serde(default)]
    policies: Vec<Named>,
    #[serde(default)]
    parameters: Vec<Value>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct User {
    name: String,
    password_hash: String,
    #[serde(default = "sha256")]
    hashing_algorithm: String,
    /// A list, or (older exports) one comma-separated string.
    #[serde(default)]
    tags: Value,
}

fn sha256() -> String {
    "rabbit_password_hashing_sha256".into()
}

impl User {
    /// Its RabbitMQ tags that this broker has (`policymaker` and others are dropped).
    fn tags(&self) -> Vec<Tag> {
        let names: Vec<&str> = match &self.tags {
            Value::String(text) => text.split(',').map(str::trim).collect(),
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        names
            .into_iter()
            .filter_map(|n| Tag::parse(n).ok())
            .collect()
    }
}

#[derive(Deserialize, Serialize)]
struct Permission {
    user: String,
    vhost: String,
    configure: String,
    write: String,
    read: String,
    /// This broker's own permission (deploying plugins, attaching handlers); not
    /// RabbitMQ's.
    #[serde(default, skip_serializing_if = "is_false")]
    plugin: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

#[derive(Deserialize, Serialize)]
struct Exchange {
    name: String,
    #[serde(default = "default_vhost")]
    vhost: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Headers,
}

#[derive(Deserialize, Serialize)]
struct Queue {
    name: String,
    #[serde(default = "default_vhost")]
    vhost: String,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Headers,
}

#[derive(Deserialize, Serialize)]
struct Bound {
    source: String,
    #[serde(default = "default_vhost")]
    vhost: String,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Headers,
}

fn default_vhost() -> String {
    broker::vhost::DEFAULT_VHOST.to_owned()
}

/// What the import did, printed at its end.
#[derive(Default)]
struct Tally {
    declared: Vec<(&'static str, usize)>,
    failed: Vec<String>,
}

impl Tally {
    fn count(&mut self, what: &'static str) {
        match self.declared.iter_mut().find(|(w, _)| *w == what) {
            Some((_, n)) => *n += 1,
            None => self.declared.push((what, 1)),
        }
    }

    fn fail(&mut self, what: String, error: impl std::fmt::Display) {
        eprintln!("failed: {what}: {error}");
        self.failed.push(what);
    }

    /// Counts one of `what` as declared, or reports why `item` was not.
    fn record<T>(
        &mut self,
        what: &'static str,
        item: String,
        result: Result<T, impl std::fmt::Display>,
    ) {
        match result {
            Ok(_) => self.count(what),
            Err(e) => self.fail(item, e),
        }
    }
}

pub async fn run(command: Definitions) -> anyhow::Result<()> {
    match command {
        Definitions::Import(args) => import(args).await,
        Definitions::Export(args) => export(args).await,
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let file: File = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a RabbitMQ definitions file", args.file.display()))?;
    let mut tally = Tally::default();
    let admin = args.server.connect().await?;
    let existing: BTreeSet<String> = admin.list_vhosts().await?.into_iter().collect();
    let mut vhosts: BTreeSet<String> = file.vhosts.iter().map(|v| v.name.clone()).collect();
    vhosts.extend(file.exchanges.iter().map(|e| e.vhost.clone()));
    vhosts.extend(file.queues.iter().map(|q| q.vhost.clone()));
    vhosts.extend(file.bindings.iter().map(|b| b.vhost.clone()));
    for vhost in &vhosts {
        if !existing.contains(vhost) {
            let added = admin.add_vhost(vhost).await;
            tally.record("vhosts", format!("vhost {vhost}"), added);
        }
    }
    // The permissions of users already here first: the declarations are made as the
    // importing user, who may need them. Users come after the declarations, so the
    // importing user's own password is not replaced before they are made.
    let present: BTreeSet<String> = admin
        .list_users()
        .await?
        .into_iter()
        .map(|u| u.user)
        .collect();
    let (now, later): (Vec<_>, Vec<_>) = file
        .permissions
        .iter()
        .partition(|p| present.contains(&p.user));
    set_permissions(&admin, &now, &mut tally).await;
    for vhost in &vhosts {
        let client = match args.server.connect_in(vhost).await {
            Ok(client) => client,
            Err(e) => {
                tally.fail(format!("vhost {vhost}"), e);
                continue;
            }
        };
        import_vhost(&client, vhost, &file, &mut tally).await;
    }
    for user in &file.users {
        let imported = ImportedHash {
            password_hash: user.password_hash.clone(),
            hashing_algorithm: user.hashing_algorithm.clone(),
        };
        let added = admin.import_user(&user.name, imported, &user.tags()).await;
        tally.record("users", format!("user {}", user.name), added);
    }
    set_permissions(&admin, &later, &mut tally).await;
    let declared: Vec<String> = tally
        .declared
        .iter()
        .map(|(what, n)| format!("{what} {n}"))
        .collect();
    println!("declared: {}", none_if_empty(declared));
    let mut skipped = Vec::new();
    if !file.policies.is_empty() {
        let names: Vec<&str> = file.policies.iter().map(|p| p.name.as_str()).collect();
        skipped.push(format!(
            "policies {} ({}: give their keys as queue arguments)",
            names.len(),
            names.join(", ")
        ));
    }
    if !file.parameters.is_empty() {
        skipped.push(format!("parameters {}", file.parameters.len()));
    }
    println!("skipped: {}", none_if_empty(skipped));
    anyhow::ensure!(
        tally.failed.is_empty(),
        "{} definitions could not be declared: {}",
        tally.failed.len(),
        tally.failed.join("; ")
    );
    Ok(())
}

/// Sets each of `permissions`.
async fn set_permissions(admin: &Client, permissions: &[&Permission], tally: &mut Tally) {
    for p in permissions {
        let set = SetPermissions {
            user: p.user.clone(),
            vhost: p.vhost.clone(),
            configure: p.configure.clone(),
            write: p.write.clone(),
            read: p.read.clone(),
            plugin: p.plugin,
        };
        let item = format!("permissions of {} in {}", p.user, p.vhost);
        tally.record("permissions", item, admin.set_permissions(set).await);
    }
}

/// Declares `vhost`'s exchanges, queues and bindings through `client` (connected to it).
async fn import_vhost(client: &Client, vhost: &str, file: &File, tally: &mut Tally) {
    for e in file.exchanges.iter().filter(|e| e.vhost == vhost) {
        // The default exchange and `amq.*` are the broker's own.
        if e.name.is_empty() || e.name.starts_with("amq.") {
            continue;
        }
        let declared = declare_exchange(client, e).await;
        tally.record(
            "exchanges",
            format!("exchange {} in {vhost}", e.name),
            declared,
        );
    }
    for q in file.queues.iter().filter(|q| q.vhost == vhost) {
        let declared = declare_queue(client, q).await;
        tally.record("queues", format!("queue {} in {vhost}", q.name), declared);
    }
    for b in file.bindings.iter().filter(|b| b.vhost == vhost) {
        // Every queue is bound to the default exchange by its name already.
        if b.source.is_empty() {
            continue;
        }
        let item = format!("binding {} → {} in {vhost}", b.source, b.destination);
        let bound = match b.destination_type.as_str() {
            "queue" => client
                .bind(Binding {
                    exchange: b.source.clone(),
                    queue: b.destination.clone(),
                    key: b.routing_key.clone(),
                    arguments: b.arguments.clone(),
                })
                .await
                .map_err(|e| e.to_string()),
            "exchange" => client
                .bind_exchange(ExchangeBinding {
                    source: b.source.clone(),
                    destination: b.destination.clone(),
                    key: b.routing_key.clone(),
                    arguments: b.arguments.clone(),
                })
                .await
                .map_err(|e| e.to_string()),
            other => Err(format!("unknown destination_type `{other}`")),
        };
        tally.record("bindings", item, bound);
    }
}

async fn declare_exchange(client: &Client, e: &Exchange) -> Result<(), String> {
    let (kind, arguments) =
        broker::exchange::rabbitmq_arguments::exchange_declaration(&e.kind, e.arguments.clone())?;
    let declare = DeclareExchange {
        exchange: e.name.clone(),
        kind,
        durable: e.durable,
        internal: e.internal,
        auto_delete: e.auto_delete,
        arguments,
    };
    client
        .declare_exchange_with(declare)
        .await
        .map_err(|e| e.to_string())
}

async fn declare_queue(client: &Client, q: &Queue) -> Result<(), String> {
    let given = q.arguments.iter().map(|(k, v)| (k.as_str(), v.clone()));
    let mut arguments = rabbitmq_arguments::core_arguments(given)?;
    // `dead_letter: true` (what an export of this broker writes for a queue with the
    // `<queue>.dlq` default) is that default for a queue that is not exclusive.
    if arguments.get("dead_letter") == Some(&Value::Bool(true))
        && !arguments.contains_key("dead_letter_exchange")
    {
        arguments.remove("dead_letter");
    } else {
        rabbitmq_arguments::drop_dead_letters_by_default(&mut arguments)?;
    }
    let options = QueueOptions {
        durable: q.durable,
        exclusive: false,
        auto_delete: q.auto_delete,
        arguments,
    };
    client
        .declare_queue(&q.name, options)
        .await
        .map(drop)
        .map_err(|e: ClientError| e.to_string())
}

fn none_if_empty(items: Vec<String>) -> String {
    match items.is_empty() {
        true => "nothing".into(),
        false => items.join(", "),
    }
}

/// A RabbitMQ definitions file of what this broker holds.
#[derive(Serialize)]
struct Export {
    product_name: &'static str,
    product_version: &'static str,
    users: Vec<Value>,
    vhosts: Vec<Value>,
    permissions: Vec<Permission>,
    exchanges: Vec<Exchange>,
    queues: Vec<Queue>,
    bindings: Vec<Bound>,
    policies: Vec<Value>,
    parameters: Vec<Value>,
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let admin = args.server.connect().await?;
    let vhosts = admin.list_vhosts().await?;
    let permissions = admin.list_permissions().await?;
    let mut file = Export {
        product_name: "broker",
        product_version: env!("CARGO_PKG_VERSION"),
        users: Vec::new(),
        vhosts: vhosts
            .iter()
            .map(|name| serde_json::json!({"name": name}))
            .collect(),
        permissions: permissions
            .into_iter()
            .map(|p| Permission {
                user: p.user,
                vhost: p.vhost,
                configure: p.configure,
                write: p.write,
                read: p.read,
                plugin: p.plugin,
            })
            .collect(),
        exchanges: Vec::new(),
        queues: Vec::new(),
        bindings: Vec::new(),
        policies: Vec::new(),
        parameters: Vec::new(),
    };
    for vhost in &vhosts {
        let client = args.server.connect_in(vhost).await?;
        export_vhost(&client, vhost, &mut file).await?;
    }
    let text = serde_json::to_string_pretty(&file)?;
    match &args.file {
        Some(path) => std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{text}"),
    }
    eprintln!(
        "exported: vhosts {}, permissions {}, exchanges {}, queues {}, bindings {} (users are not exported: add them where this is imported)",
        file.vhosts.len(),
        file.permissions.len(),
        file.exchanges.len(),
        file.queues.len(),
        file.bindings.len()
    );
    Ok(())
}

/// Adds `vhost`'s exchanges (not the default one nor `amq.*`), queues (not exclusive
/// ones, as RabbitMQ) and bindings to `file`, read through `client` (connected to it).
async fn export_vhost(client: &Client, vhost: &str, file: &mut Export) -> anyhow::Result<()> {
    for e in client.list_exchanges().await?.exchanges {
        if e.exchange.is_empty() || e.exchange.starts_with("amq.") {
            continue;
        }
        let (kind, arguments) =
            broker::exchange::rabbitmq_arguments::rabbitmq_exchange(&e.kind, &e.arguments);
        file.exchanges.push(Exchange {
            name: e.exchange,
            vhost: vhost.to_owned(),
            kind,
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: e.internal,
            arguments,
        });
    }
    for q in client.list_queues().await? {
        if q.exclusive {
            continue;
        }
        file.queues.push(Queue {
            name: q.queue,
            vhost: vhost.to_owned(),
            durable: q.durable,
            auto_delete: q.auto_delete,
            arguments: rabbitmq_arguments::rabbitmq_arguments(&q.arguments),
        });
    }
    for b in client.list_bindings().await? {
        file.bindings.push(Bound {
            source: b.exchange,
            vhost: vhost.to_owned(),
            destination: b.queue,
            destination_type: "queue".into(),
            routing_key: b.key,
            arguments: b.arguments,
        });
    }
    for b in client.list_exchange_bindings().await? {
        file.bindings.push(Bound {
            source: b.source,
            vhost: vhost.to_owned(),
            destination: b.destination,
            destination_type: "exchange".into(),
            routing_key: b.key,
            arguments: b.arguments,
        });
    }
    Ok(())
}
