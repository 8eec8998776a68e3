//! The geo-IP database: a MaxMind file in the GeoIP2/GeoLite2 City layout,
//! read with maxminddb and swapped atomically when the file changes. A file
//! that does not open keeps the old one in service.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use maxminddb::Reader;
use serde::Deserialize;

/// The few fields of a City record steering needs: decoding only these
/// skips the names, subdivisions and the rest.
#[derive(Debug, Deserialize)]
struct Slim<'a> {
    #[serde(borrow, default)]
    country: Option<SlimCode<'a>>,
    #[serde(borrow, default)]
    continent: Option<SlimCode<'a>>,
    #[serde(default)]
    location: Option<SlimLocation>,
}

#[derive(Debug, Deserialize)]
struct SlimLocation {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct SlimCode<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("geo-IP database `{path}`: {message}")]
    Open { path: PathBuf, message: String },
    #[error("geo-IP source `{path}`: {message}")]
    Source { path: PathBuf, message: String },
}

/// A two-letter code (ISO country or continent), kept without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code([u8; 2]);

impl Code {
    fn new(s: &str) -> Option<Code> {
        match s.as_bytes() {
            [a, b] => Some(Code([*a, *b])),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// What the database says about an address.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    pub location: Option<(f64, f64)>,
    pub country: Option<Code>,
    pub continent: Option<Code>,
    /// Prefix length of the database network that matched.
    pub prefix: u8,
}

/// The database in service, reloadable.
#[derive(Debug)]
pub struct GeoDb {
    path: PathBuf,
    loaded: ArcSwap<Loaded>,
    /// What the file looked like when last loaded.
    modified: std::sync::Mutex<Option<FileStamp>>,
}

/// A database in service, with the records already decoded (many networks
/// share one record: a city's, a country's), by their offset in the file.
#[derive(Debug)]
struct Loaded {
    reader: Reader<Vec<u8>>,
    decoded: std::sync::RwLock<std::collections::HashMap<usize, Fields>>,
}

/// Most decoded records kept (GeoLite2-City has well under this).
const MAX_DECODED: usize = 1 << 18;

/// What steering reads of a record.
#[derive(Debug, Clone, Copy)]
struct Fields {
    location: Option<(f64, f64)>,
    country: Option<Code>,
    continent: Option<Code>,
}

impl Loaded {
    fn new(reader: Reader<Vec<u8>>) -> Arc<Loaded> {
        Arc::new(Loaded { reader, decoded: Default::default() })
    }
}

/// Modification time, size and inode: a replaced file differs in at least
/// one even within the file system's timestamp granularity.
type FileStamp = (SystemTime, u64, u64);

fn open(path: &Path) -> Result<Reader<Vec<u8>>, GeoError> {
    let reader =
        Reader::open_readfile(path).map_err(|e| GeoError::Open { path: path.into(), message: e.to_string() })?;
    // A database that opens but cannot answer is as bad as a missing one:
    // the whole search tree is walked and every record it points to is
    // decoded as steering reads it, before it goes into service (one lookup
    // would not reach a corrupt data section, and every lookup would then
    // fail to decode).
    check_records(&reader).map_err(|e| GeoError::Open { path: path.into(), message: format!("corrupt: {e}") })?;
    Ok(reader)
}

/// Walks every network of the tree and decodes each distinct record once;
/// returns how many records there are.
fn check_records(reader: &Reader<Vec<u8>>) -> Result<usize, maxminddb::MaxMindDbError> {
    let mut seen = std::collections::HashSet::new();
    for network in reader.networks(maxminddb::WithinOptions::default())? {
        let network = network?;
        if network.offset().is_some_and(|o| seen.insert(o)) {
            network.decode::<Slim<'_>>()?;
        }
    }
    Ok(seen.len())
}

fn mtime(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl GeoDb {
    /// Opens the database; a missing or corrupt file is an error.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let reader = open(path)?;
        Ok(GeoDb {
            path: path.to_path_buf(),
            loaded: ArcSwap::new(Loaded::new(reader)),
            modified: std::sync::Mutex::new(mtime(path)),
        })
    }

    /// Reloads the file if it changed. Returns `Ok(true)` when a new
    /// database went into service; a bad file leaves the old one in place.
    pub fn reload_if_changed(&self) -> Result<bool, GeoError> {
        let now = mtime(&self.path);
        let mut seen = self.modified.lock().unwrap_or_else(|p| p.into_inner());
        if now == *seen {
            return Ok(false);
        }
        *seen = now;
        let reader = open(&self.path)?;
        self.loaded.store(Loaded::new(reader));
        Ok(true)
    }

    pub fn locate(&self, ip: IpAddr) -> Option<Place> {
        let loaded = self.loaded.load();
        let found = loaded.reader.lookup(ip).ok()?;
        if !found.has_data() {
            return None;
        }
        let prefix = found.network().map(|n| n.prefix()).unwrap_or(0);
        let offset = found.offset();
        let cached = offset.and_then(|o| loaded.decoded.read().unwrap_or_else(|p| p.into_inner()).get(&o).copied());
        let fields = match cached {
            Some(fields) => fields,
            None => {
                let slim: Slim<'_> = match found.decode() {
                    Ok(slim) => slim?,
                    Err(e) => {
                        // Not "unknown": a record that does not decode is counted.
                        metrics::counter!("outpost_dns_geoip_decode_errors_total").increment(1);
                        tracing::debug!(error = %e, %ip, "geo-IP record does not decode");
                        return None;
                    }
                };
                let fields = Fields {
                    location: match slim.location {
                        Some(SlimLocation { latitude: Some(lat), longitude: Some(lon) }) => Some((lat, lon)),
                        _ => None,
                    },
                    country: slim.country.and_then(|c| c.iso_code).and_then(Code::new),
                    continent: slim.continent.and_then(|c| c.code).and_then(Code::new),
                };
                if let Some(o) = offset {
                    let mut decoded = loaded.decoded.write().unwrap_or_else(|p| p.into_inner());
                    if decoded.len() < MAX_DECODED {
                        decoded.insert(o, fields);
                    }
                }
                fields
            }
        };
        Some(Place { location: fields.location, country: fields.country, continent: fields.continent, prefix })
    }
}

/// One network of a readable source file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceNetwork {
    network: ipnet::IpNet,
    country: Option<String>,
    continent: Option<String>,
    city: Option<String>,
    latitude: Option<f64>,
    longitude: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Source {
    #[serde(rename = "network")]
    networks: Vec<SourceNetwork>,
}

/// Builds a City-layout MaxMind database from a TOML source:
///
/// ```toml
/// [[network]]
/// network = "81.2.69.0/24"
/// country = "GB"
/// continent = "EU"
/// city = "London"
/// latitude = 51.5142
/// longitude = -0.0931
/// ```
/// The build time written into databases built from a source file
/// (2026-01-01T00:00:00Z).
const BUILD_EPOCH: u64 = 1_767_225_600;

pub fn build_database(source: &Path, out: &Path) -> Result<usize, GeoError> {
    let err = |message: String| GeoError::Source { path: source.into(), message };
    let text = std::fs::read_to_string(source).map_err(|e| err(e.to_string()))?;
    let src: Source = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    // A fixed build time makes the file a pure function of its source, so
    // the committed sample can be checked against it; not 0, which
    // libmaxminddb (gdnsd, mmdblookup) refuses as invalid metadata.
    let built = std::time::UNIX_EPOCH + std::time::Duration::from_secs(BUILD_EPOCH);
    let mut writer = mmdb_writer::Writer::builder("GeoIP2-City").build_epoch(built).build();
    for n in &src.networks {
        let mut record = std::collections::BTreeMap::new();
        if let Some(c) = &n.country {
            record.insert("country", mmdb_writer::Value::map([("iso_code", c.as_str())]));
        }
        if let Some(c) = &n.continent {
            record.insert("continent", mmdb_writer::Value::map([("code", c.as_str())]));
        }
        if let Some(c) = &n.city {
            record.insert("city", mmdb_writer::Value::map([("names", mmdb_writer::Value::map([("en", c.as_str())]))]));
        }
        if let (Some(lat), Some(lon)) = (n.latitude, n.longitude) {
            record.insert("location", mmdb_writer::Value::map([("latitude", lat), ("longitude", lon)]));
        }
        writer
            .insert_value(n.network, mmdb_writer::Value::map(record))
            .map_err(|e| err(format!("{}: {e}", n.network)))?;
    }
    let bytes = writer.to_bytes().map_err(|e| err(e.to_string()))?;
    std::fs::write(out, bytes).map_err(|e| GeoError::Open { path: out.into(), message: e.to_string() })?;
    Ok(src.networks.len())
}
