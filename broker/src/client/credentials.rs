//! Credentials in a broker URL (`ws://user:password@host:port`), sent as HTTP Basic on
//! the WebSocket upgrade. Without them a client logs in as `guest` / `guest`, which the
//! broker accepts from loopback addresses only (as RabbitMQ's clients and broker do).

use crate::auth::{DEFAULT_PASSWORD, DEFAULT_USER};

/// The URL without its user info, and the user and password it named (percent-decoded),
/// or the default ones.
pub fn split_credentials(url: &str) -> (String, String, String) {
    let (bare, credentials) = split_user_info(url);
    let (user, password) = credentials.unwrap_or_else(default_credentials);
    (bare, user, password)
}

/// The default user and password (`guest` / `guest`).
pub fn default_credentials() -> (String, String) {
    (DEFAULT_USER.to_string(), DEFAULT_PASSWORD.to_string())
}

/// The URL without its user info, and the user and password it named (percent-decoded),
/// if it named any.
pub fn split_user_info(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_string(), None);
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    (
        format!("{scheme}://{host}{path}"),
        Some((percent_decode(user), percent_decode(password))),
    )
}

/// The `Authorization` header value for `user` and `password`.
pub fn basic_header(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// `url` with its path naming `vhost` (as in AMQP URIs: `ws://host:port/prod`; the
/// default vhost `/` is the empty path).
pub fn with_vhost(url: &str, vhost: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("ws", url));
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if vhost == crate::vhost::DEFAULT_VHOST {
        format!("{scheme}://{authority}/")
    } else {
        format!("{scheme}://{authority}/{}", percent_encode(vhost))
    }
}

/// `user:password@` for a URL, percent-encoding what a URL's user info cannot hold.
pub fn userinfo(user: &str, password: &str) -> String {
    format!("{}:{}@", percent_encode(user), percent_encode(password))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_user_info_off_the_url() {
        assert_eq!(
            split_credentials("ws://ann:p%40ss@127.0.0.1:6789/x"),
            ("ws://127.0.0.1:6789/x".into(), "ann".into(), "p@ss".into())
        );
        assert_eq!(
            split_credentials("ws://127.0.0.1:6789"),
            ("ws://127.0.0.1:6789".into(), "guest".into(), "guest".into())
        );
        let url = format!("ws://{}host:1", userinfo("a b", "p:w@/"));
        assert_eq!(
            split_credentials(&url),
            ("ws://host:1".into(), "a b".into(), "p:w@/".into())
        );
    }
}
