//! `broker vhost add|delete|list` and `broker permissions set|clear|list`, as
//! `rabbitmqctl add_vhost` / `set_permissions` do.

use broker::protocol::SetPermissions;
use clap::Subcommand;

use super::admin::ServerArg;

#[derive(Subcommand)]
pub enum Vhost {
    /// Create a virtual host.
    Add {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a virtual host with every queue, exchange and binding in it.
    Delete {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List virtual hosts.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Subcommand)]
pub enum Permissions {
    /// Set what USER may do in a vhost: regular expressions on the names of the resources
    /// it may configure (declare, delete), write (publish to, bind to) and read (consume,
    /// bind from); `""` allows nothing, `.*` everything.
    Set {
        #[arg(value_name = "USER")]
        name: String,
        configure: String,
        write: String,
        read: String,
        /// The vhost (default `/`).
        #[arg(long = "in", value_name = "VHOST", default_value = "/")]
        in_vhost: String,
        /// Also allow deploying, rolling back and resetting plugins and attaching handlers.
        #[arg(long)]
        plugin: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Take USER's permissions in a vhost away.
    Clear {
        #[arg(value_name = "USER")]
        name: String,
        /// The vhost (default `/`).
        #[arg(long = "in", value_name = "VHOST", default_value = "/")]
        in_vhost: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List every user's permissions.
    List {
        #[command(flatten)]
        server: ServerArg,
    },
}

pub async fn run_vhost(command: Vhost) -> anyhow::Result<()> {
    match command {
        Vhost::Add { name, server } => {
            server.connect().await?.add_vhost(&name).await?;
            println!("vhost {name} added");
        }
        Vhost::Delete { name, server } => {
            server.connect().await?.delete_vhost(&name).await?;
            println!("vhost {name} deleted");
        }
        Vhost::List { server } => {
            for vhost in server.connect().await?.list_vhosts().await? {
                println!("{vhost}");
            }
        }
    }
    Ok(())
}

pub async fn run_permissions(command: Permissions) -> anyhow::Result<()> {
    match command {
        Permissions::Set {
            name: user,
            configure,
            write,
            read,
            in_vhost: vhost,
            plugin,
            server,
        } => {
            let client = server.connect().await?;
            client
                .set_permissions(SetPermissions {
                    user: user.clone(),
                    vhost: vhost.clone(),
                    configure,
                    write,
                    read,
                    plugin,
                })
                .await?;
            println!("permissions of {user} in {vhost} set");
        }
        Permissions::Clear {
            name: user,
            in_vhost: vhost,
            server,
        } => {
            let client = server.connect().await?;
            client.clear_permissions(&user, &vhost).await?;
            println!("permissions of {user} in {vhost} cleared");
        }
        Permissions::List { server } => {
            let rows = server.connect().await?.list_permissions().await?;
            let user_width = rows.iter().map(|p| p.user.len()).max().unwrap_or(4).max(4);
            let vhost_width = rows.iter().map(|p| p.vhost.len()).max().unwrap_or(5).max(5);
            println!(
                "{:user_width$}  {:vhost_width$}  CONFIGURE / WRITE / READ  PLUGIN",
                "USER", "VHOST"
            );
            for p in rows {
                println!(
                    "{:user_width$}  {:vhost_width$}  {:?} / {:?} / {:?}  {}",
                    p.user,
                    p.vhost,
                    p.configure,
                    p.write,
                    p.read,
                    if p.plugin { "yes" } else { "no" }
                );
            }
        }
    }
    Ok(())
}
