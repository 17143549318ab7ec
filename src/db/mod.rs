//! The two sinks: InfluxDB v2 (raw ticks, line protocol) and TimescaleDB
//! (star-schema bars and klines).

pub mod influx;
pub mod timescale;

/// The reason a TLS handshake rejected the server's certificate, if that is
/// what `error` (or any error it wraps) says. Both sinks report it as a
/// configuration failure: retrying cannot fix a certificate.
pub(crate) fn certificate_rejected(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(error);
    while let Some(err) = source {
        if let Some(rustls::Error::InvalidCertificate(why)) = err.downcast_ref::<rustls::Error>() {
            return Some(format!("{why:?}"));
        }
        // `io::Error::source` skips the error it wraps (and hyper-rustls wraps
        // tokio-rustls's io::Error in another), so step into it by hand.
        source = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}
