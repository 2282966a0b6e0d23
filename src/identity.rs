//! Who a request is from, as the layers that serve it see it: the [`Peer`] at the other end of
//! the connection (put in each request's extensions by the listener) and the [`Tenant`] the
//! auth layer decided the request is served for (put in the response's extensions for the
//! access log).

use std::sync::Arc;

/// The tenant of requests when no API keys are configured and none is named.
pub const ANONYMOUS: &str = "anonymous";

/// The caller at the other end of a connection.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The verified client certificate's identity: its first URI SAN (a SPIFFE id under
    /// Istio), else DNS name, else e-mail, else the subject's common name.
    pub identity: Option<Arc<str>>,
}

/// The tenant a request was served for.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    /// Named by an API key or a verified certificate, so one of a set the operator controls
    /// (fit for a metrics label); otherwise the client's own claim.
    pub authenticated: bool,
}
