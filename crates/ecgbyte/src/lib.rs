pub fn version() -> &'static str { env!("CARGO_PKG_VERSION") }
#[cfg(feature = "python")]
mod python;
