//! Agents and their tokens from the distributor's admin API, as an operator provisions them:
//! `PUT /agents/{id}` then `POST /agents/{id}/tokens`. A small HTTP/1.1 client on one kept-alive
//! connection per worker: thousands of agents are provisioned in seconds.

use std::collections::BTreeMap;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin address is not `http://host:port`.
    #[error("the admin API address must be http://HOST:PORT, not {0}")]
    BadAddress(String),
    /// The connection failed or closed mid-response.
    #[error("admin API connection: {0}")]
    Io(#[from] std::io::Error),
    /// The API answered something else than expected.
    #[error("{request}: the admin API answered {status}: {body}")]
    Refused {
        request: String,
        status: u16,
        body: String,
    },
    /// A response this client cannot read (no Content-Length, or not JSON).
    #[error("unreadable admin API response to {0}")]
    Unreadable(String),
}

/// One kept-alive connection to the admin API.
#[derive(Debug)]
pub struct Admin {
    stream: BufReader<TcpStream>,
    host: String,
    key: String,
}

impl Admin {
    pub async fn connect(address: &str, key: &str) -> Result<Admin, AdminError> {
        let host = address
            .strip_prefix("http://")
            .map(|h| h.trim_end_matches('/'))
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| AdminError::BadAddress(address.to_owned()))?;
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        Ok(Admin {
            stream: BufReader::new(stream),
            host: host.to_owned(),
            key: key.to_owned(),
        })
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), AdminError> {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.key,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let unreadable = || AdminError::Unreadable(format!("{method} {path}"));
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(unreadable)?;
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(unreadable());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let length = length.filter(|n| *n <= 1 << 20).ok_or_else(unreadable)?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Creates or replaces agent `id` with `skills` (level 50 each) and one call at a time,
    /// and returns a fresh token for it.
    pub async fn agent_token(&mut self, id: &str, skills: &[String]) -> Result<String, AdminError> {
        let skills: BTreeMap<&str, u8> = skills.iter().map(|s| (s.as_str(), 50)).collect();
        let agent = serde_json::json!({
            "id": id, "name": format!("Load agent {id}"), "skills": skills, "max_calls": 1,
        });
        let path = format!("/agents/{id}");
        let (status, body) = self.request("PUT", &path, &agent.to_string()).await?;
        if !(200..300).contains(&status) {
            return Err(AdminError::Refused {
                request: format!("PUT {path}"),
                status,
                body,
            });
        }
        let path = format!("/agents/{id}/tokens");
        let (status, body) = self.request("POST", &path, "").await?;
        if status != 200 {
            return Err(AdminError::Refused {
                request: format!("POST {path}"),
                status,
                body,
            });
        }
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_owned))
            .ok_or(AdminError::Unreadable(format!("POST {path}")))
    }
}
