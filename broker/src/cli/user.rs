//! `broker user add NAME PASSWORD [--tag T]...`, `delete NAME`, `list`, `passwd NAME PASSWORD`,
//! `limits NAME [--max-connections N]`.

use broker::auth::{Tag, UserLimits};
use clap::Subcommand;

use super::admin::ServerArg;

#[derive(Subcommand)]
pub enum User {
    /// Create (or replace) a user.
    Add {
        name: String,
        #[arg(value_name = "PASSWORD")]
        new_password: String,
        /// administrator, management, monitoring or none; repeat for several.
        #[arg(long = "tag", value_parser = Tag::parse)]
        tags: Vec<Tag>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a user.
    Delete {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List users and their tags.
    List(ServerArg),
    /// Set a user's limits; a limit not given is lifted.
    Limits {
        name: String,
        /// Connections the user may have open at once, over every protocol.
        #[arg(long)]
        max_connections: Option<u32>,
        /// Queues the user may have declared (and not deleted), over every vhost.
        #[arg(long)]
        max_queues: Option<u32>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Set a user's password.
    Passwd {
        name: String,
        /// The new password.
        #[arg(value_name = "PASSWORD")]
        new_password: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

pub async fn run(command: User) -> anyhow::Result<()> {
    match command {
        User::Add {
            name,
            new_password,
            tags,
            server,
        } => {
            let client = server.connect().await?;
            client.add_user(&name, &new_password, &tags).await?;
            println!("user {name} stored");
        }
        User::Delete { name, server } => {
            let client = server.connect().await?;
            client.delete_user(&name).await?;
            println!("user {name} deleted");
        }
        User::List(server) => {
            let client = server.connect().await?;
            let users = client.list_users().await?;
            let width = users.iter().map(|u| u.user.len()).max().unwrap_or(4).max(4);
            println!("{:width$}  TAGS", "USER");
            for user in users {
                let mut tags: Vec<String> = user.tags.iter().map(Tag::to_string).collect();
                if user.loopback_only {
                    tags.push("(loopback only)".into());
                }
                if let Some(n) = user.max_connections {
                    tags.push(format!("(max {n} connections)"));
                }
                if let Some(n) = user.max_queues {
                    tags.push(format!("(max {n} queues)"));
                }
                println!("{:width$}  {}", user.user, tags.join(" "));
            }
        }
        User::Limits {
            name,
            max_connections,
            max_queues,
            server,
        } => {
            let client = server.connect().await?;
            let limits = UserLimits {
                max_connections,
                max_queues,
            };
            client.set_user_limits(&name, &limits).await?;
            match max_connections {
                Some(n) => println!("user {name} may have {n} connections"),
                None => println!("user {name} has no connection limit"),
            }
            match max_queues {
                Some(n) => println!("user {name} may have {n} queues"),
                None => println!("user {name} has no queue limit"),
            }
        }
        User::Passwd {
            name,
            new_password,
            server,
        } => {
            let client = server.connect().await?;
            client.change_password(&name, &new_password).await?;
            println!("password of {name} changed");
        }
    }
    Ok(())
}
