//! The gateway configs the proxy benches run: the minimal one (one route, access log off,
//! metrics on, XDP off), each feature added alone, and all of them (the example config's
//! features), with the credentials their requests carry.

use std::{net::SocketAddr, path::Path};

use gateway_tests::jwks::{KeyKind, TestKey};
use sha2::Digest as _;

/// The API key the metered consumer sends in `x-api-key`.
const API_KEY: &str = "bench-api-key";

/// Features on top of the minimal config.
#[derive(Clone, Copy, Default)]
pub struct Features {
    /// An access log written to a file.
    pub access_log: bool,
    /// `[defend]` with a trap trigger (no request of the bench trips it).
    pub defend: bool,
    /// The route needs an RS256 JWT.
    pub jwt: bool,
    /// The route caches its responses (one hour).
    pub cache: bool,
    /// The route takes an API key, so requests are metered per consumer.
    pub api_key: bool,
    /// Besides the measured route, a second one at `/cached` that caches: the full config.
    pub cached_route: bool,
    /// TLS to the upstream (see [`upstream_tls`]).
    pub upstream_tls: bool,
}

impl Features {
    pub const ALL: Features = Features {
        access_log: true,
        defend: true,
        jwt: true,
        cache: false,
        api_key: true,
        cached_route: true,
        upstream_tls: false,
    };
}

/// The configs `--config NAME` picks for `--callgrind`: the minimal one, each feature alone,
/// and all of them.
pub const NAMED: [(&str, Features); 7] = {
    let none = Features {
        access_log: false,
        defend: false,
        jwt: false,
        cache: false,
        api_key: false,
        cached_route: false,
        upstream_tls: false,
    };
    [
        ("minimal", none),
        (
            "access-log",
            Features {
                access_log: true,
                ..none
            },
        ),
        (
            "defend",
            Features {
                defend: true,
                ..none
            },
        ),
        ("jwt", Features { jwt: true, ..none }),
        (
            "cache",
            Features {
                cache: true,
                ..none
            },
        ),
        (
            "api-key",
            Features {
                api_key: true,
                ..none
            },
        ),
        ("full", Features::ALL),
    ]
};

/// Listener ports and limits of one gateway.
pub struct Listeners<'a> {
    pub plain: u16,
    /// A TLS listener: port, certificate and key files.
    pub tls: Option<(u16, &'a Path, &'a Path)>,
    pub max_connections: usize,
    /// How long a connection may wait for its next request (and for a request head).
    pub idle_seconds: u32,
}

/// The signing key and token of the JWT routes.
pub struct Credentials {
    key: TestKey,
    pub bearer: String,
}

impl Credentials {
    /// An RS256 key pair made by openssl in `dir`, and a token valid for a day.
    pub fn generate(dir: &Path) -> Credentials {
        let key = TestKey::generate(dir, KeyKind::Rsa, jsonwebtoken::Algorithm::RS256, "bench");
        let token = key.sign(&serde_json::json!({
            "sub": "bench", "exp": jsonwebtoken::get_current_timestamp() + 86_400
        }));
        Credentials {
            key,
            bearer: format!("Bearer {token}"),
        }
    }

    /// The headers a request to a route with `features` carries.
    pub fn headers(&self, features: Features) -> Vec<(String, String)> {
        if features.jwt {
            vec![("authorization".into(), self.bearer.clone())]
        } else if features.api_key {
            vec![("x-api-key".into(), API_KEY.into())]
        } else {
            Vec::new()
        }
    }
}

/// `config` (from [`gateway`]) with TLS to its upstream, trusting `ca` for `localhost`.
pub fn upstream_tls(config: &str, ca: &Path) -> String {
    let tls = format!("tls = {{ ca_file = {ca:?}, server_name = \"localhost\" }}\n");
    config.replacen(
        "[[routes]]\nname = \"bench\"",
        &(tls + "[[routes]]\nname = \"bench\""),
        1,
    )
}

/// The config text for `Gateway::start` (`{admin_socket}` and `{dir}` are its placeholders).
pub fn gateway(
    upstream: SocketAddr,
    listeners: &Listeners,
    features: Features,
    credentials: &Credentials,
) -> anyhow::Result<String> {
    let metrics = crate::proxy::free_port()?;
    let access_log = if features.access_log {
        "path = \"{dir}/access.log\""
    } else {
        "enabled = false"
    };
    let mut text = format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{{dir}}/state.json\"\n\
         [xdp]\nmode = \"off\"\n[metrics]\naddress = \"127.0.0.1:{metrics}\"\n\
         [access_log]\n{access_log}\n\
         [limits]\nmax_connections = {max}\nheader_read_timeout = \"{idle}s\"\n\
         idle_timeout = \"{idle}s\"\n\
         [[listeners]]\nname = \"plain\"\naddress = \"127.0.0.1:{plain}\"\nprotocol = \"http\"\n",
        max = listeners.max_connections,
        idle = listeners.idle_seconds,
        plain = listeners.plain,
    );
    if let Some((port, cert, key)) = listeners.tls {
        text += &format!(
            "[[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"https\"\n\
             [[listeners.tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\nnames = [\"localhost\"]\n"
        );
    }
    text += &format!(
        "[[upstreams]]\nname = \"bench\"\ntargets = [{{ address = \"{upstream}\" }}]\n\
         [[routes]]\nname = \"bench\"\nupstream = \"bench\"\nmatch = {{ path_prefix = \"/\" }}\n"
    );
    let auth = match (features.jwt, features.api_key) {
        (true, true) => "auth = { jwt = \"bench\", api_key = { header = \"x-api-key\" } }\n",
        (true, false) => "auth = { jwt = \"bench\" }\n",
        (false, true) => "auth = { api_key = { header = \"x-api-key\" } }\n",
        (false, false) => "",
    };
    text += auth;
    if features.cache {
        text += "cache = { ttl = \"1h\" }\n";
    }
    if features.cached_route {
        text += "[[routes]]\nname = \"cached\"\nupstream = \"bench\"\n\
                 match = { path_prefix = \"/cached\" }\ncache = { ttl = \"1h\" }\n";
    }
    if features.jwt {
        text += &format!(
            "[[auth.jwt]]\nname = \"bench\"\npublic_key = {:?}\n",
            credentials.key.public_pem
        );
    }
    if features.api_key {
        let hash = hex::encode(sha2::Sha256::digest(API_KEY.as_bytes()));
        text += &format!("[[consumers]]\nname = \"bench\"\napi_keys = [\"sha256:{hash}\"]\n");
    }
    if features.defend {
        text += "[defend]\n[[defend.triggers]]\nsignal = \"trap\"\n\
                 paths = [\"/wp-login.php\", \"/.env\", \"/cgi-bin/*\"]\ncount = 1\nban = \"1h\"\n";
    }
    Ok(text)
}
