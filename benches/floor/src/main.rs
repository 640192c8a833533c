//! The lower bound of an inner-loop rebuild: read the bytes that changed, hash them, and upload
//! them once to the registry as one blob (monolithic `POST` then `PUT ?digest=`), over one
//! keep-alive HTTP/1.1 connection. No image, no manifest, no compression.
//!
//! Usage: `fastbuild-bench-floor HOST:PORT REPOSITORY [FILE...]`
//! With no FILE nothing changed: the process starts and exits (the floor of a no-op rebuild).
//! Prints one line on stdout: `bytes=N read_hash_ms=X upload_ms=Y digest=sha256:…`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use sha2::{Digest, Sha256};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: fastbuild-bench-floor HOST:PORT REPOSITORY [FILE...]".into());
    }
    let (host, repo, files) = (&args[0], &args[1], &args[2..]);
    if files.is_empty() {
        println!("bytes=0 read_hash_ms=0 upload_ms=0 digest=-");
        return Ok(());
    }

    let t0 = Instant::now();
    let mut body = Vec::new();
    for f in files {
        std::fs::File::open(f)
            .and_then(|mut h| h.read_to_end(&mut body))
            .map_err(|e| format!("failed to read `{f}`: {e}"))?;
    }
    let digest = format!("sha256:{:x}", Sha256::digest(&body));
    let t1 = Instant::now();

    let stream = TcpStream::connect(host.as_str())?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;

    let req = format!(
        "POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
    );
    writer.write_all(req.as_bytes())?;
    let (status, location) = read_response(&mut reader)?;
    if status != 202 {
        return Err(format!("POST upload to `{repo}` on {host}: status {status}").into());
    }
    let location = location.ok_or("no Location in the 202 answer")?;
    // Absolute (`http://host/v2/…`) or relative: keep the path and query only.
    let path = match location.find("://") {
        Some(i) => {
            let rest = &location[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..]).to_string()
        }
        None => location,
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let req = format!(
        "PUT {path}{sep}digest={digest} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    writer.write_all(req.as_bytes())?;
    writer.write_all(&body)?;
    let (status, _) = read_response(&mut reader)?;
    if status != 201 {
        return Err(format!("PUT blob {digest} to `{repo}` on {host}: status {status}").into());
    }
    let t2 = Instant::now();
    println!(
        "bytes={} read_hash_ms={:.2} upload_ms={:.2} digest={digest}",
        body.len(),
        (t1 - t0).as_secs_f64() * 1e3,
        (t2 - t1).as_secs_f64() * 1e3
    );
    Ok(())
}

/// Reads one response: status, `Location` header; skips a `Content-Length` body.
fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, Option<String>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .ok_or("empty HTTP response")?
        .parse()?;
    let (mut location, mut len) = (None, 0usize);
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("location") {
                location = Some(v.to_string());
            } else if k.eq_ignore_ascii_case("content-length") {
                len = v.parse()?;
            }
        }
    }
    let mut skip = vec![0u8; len];
    r.read_exact(&mut skip)?;
    Ok((status, location))
}
