//! The CLI side of the admin API.

use std::{io, net::SocketAddr, path::PathBuf};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::{TcpStream, UnixStream};

use crate::api::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the gateway daemon is not running: no admin socket at {0} (start it with \
         `gateway run --config FILE`, or point --socket at the socket named by admin.socket)"
    )]
    NotRunning(PathBuf),
    #[error(
        "permission denied on the admin socket {0}: it is root-only by default; run the command as root (sudo)"
    )]
    PermissionDenied(PathBuf),
    #[error("talking to the gateway daemon over {path} failed: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("the gateway daemon answered {status}: {message}")]
    Api { status: u16, message: String },
}

const JSON: &str = "application/json";

/// Where the daemon's admin API is: its unix socket, or its loopback TCP listener.
pub struct Client {
    socket: PathBuf,
    tcp: Option<(SocketAddr, String)>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            tcp: None,
        }
    }

    /// The loopback TCP listener (`admin.tcp`), with its bearer token.
    pub fn tcp(address: SocketAddr, token: String) -> Self {
        Self {
            socket: PathBuf::from(format!("tcp://{address}")),
            tcp: Some((address, token)),
        }
    }

    /// `GET path`, decoding the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(hyper::Method::GET, path, JSON, Bytes::new())
            .await
    }

    /// `POST path` with a JSON body, decoding the JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|error| self.protocol(error))?;
        self.call(hyper::Method::POST, path, JSON, Bytes::from(body))
            .await
    }

    /// `POST path` with a body of `content_type`, decoding the JSON answer.
    pub async fn post_raw<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        self.call(hyper::Method::POST, path, content_type, body)
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let mut sender = match &self.tcp {
            Some((address, _)) => {
                let stream = TcpStream::connect(address)
                    .await
                    .map_err(|error| self.connect_error(error))?;
                self.handshake(stream).await?
            }
            None => {
                let stream = UnixStream::connect(&self.socket)
                    .await
                    .map_err(|error| self.connect_error(error))?;
                self.handshake(stream).await?
            }
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "gateway")
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(
                hyper::header::AUTHORIZATION,
                format!(
                    "Bearer {}",
                    self.tcp.as_ref().map_or("", |(_, token)| token)
                ),
            )
            .body(Full::new(body))
            .map_err(|error| self.protocol(error))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| self.protocol(error))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| self.protocol(error))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(&body)
                .map(|api| api.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|error| self.protocol(error))
    }

    async fn handshake<S>(
        &self,
        stream: S,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| self.protocol(error))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    fn connect_error(&self, error: io::Error) -> ClientError {
        match error.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(self.socket.clone())
            }
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.socket.clone()),
            _ => self.protocol(error),
        }
    }

    fn protocol(&self, error: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            path: self.socket.clone(),
            message: error.to_string(),
        }
    }
}
