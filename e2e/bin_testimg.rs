//! `berth-testimg`: build berth's test images (see `e2e/testimg.rs`) and push them to a
//! plain-HTTP registry, or list them.
//!
//! ```text
//! berth-testimg push HOST:PORT [--user USER --password PASS]
//! berth-testimg list
//! ```

#[path = "testimg.rs"]
mod testimg;

use std::process::ExitCode;

const USAGE: &str =
    "usage: berth-testimg push HOST:PORT [--user USER --password PASS]\n       berth-testimg list";

fn print_table(images: &[testimg::TestImage], addr: Option<&str>) {
    for i in images {
        let name = match addr {
            Some(a) => format!("{a}/{}", i.reference),
            None => i.reference.clone(),
        };
        let user = if i.user.is_empty() {
            "-".to_string()
        } else {
            i.user.clone()
        };
        println!("{name}");
        println!("  manifest  {} ({})", i.manifest_digest, i.media_type);
        if i.platform_manifest_digest != i.manifest_digest {
            println!("  {:<9} {}", i.platform, i.platform_manifest_digest);
        }
        println!(
            "  image id  {}  user {user}  size {}",
            i.config_digest, i.size
        );
        for (d, mt) in i.layer_digests.iter().zip(&i.layer_media_types) {
            println!("  layer     {d} ({mt})");
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") if args.len() == 1 => {
            print_table(&testimg::list_all(), None);
            ExitCode::SUCCESS
        }
        Some("push") if args.len() >= 2 => {
            let addr = &args[1];
            let (mut user, mut pass) = (None, None);
            let mut rest = args[2..].iter();
            while let Some(a) = rest.next() {
                match (a.as_str(), rest.next()) {
                    ("--user", Some(v)) => user = Some(v.clone()),
                    ("--password", Some(v)) => pass = Some(v.clone()),
                    _ => {
                        eprintln!("{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            let auth = match (&user, &pass) {
                (Some(u), Some(p)) => Some((u.as_str(), p.as_str())),
                (None, None) => None,
                _ => {
                    eprintln!("berth-testimg: --user and --password go together");
                    return ExitCode::from(2);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("berth-testimg: tokio runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(testimg::push_all_with_auth(addr, auth)) {
                Ok(images) => {
                    print_table(&images, Some(addr));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth-testimg: push to {addr} failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
