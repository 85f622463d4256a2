//! The pull figure: pull + unpack of an image from its registry into a cold store.
//!
//! Each run: `RemoveImage(REF)` (berth then frees the layers and blobs no other image
//! references; containerd garbage-collects them), `ImageStatus(REF)` must then find
//! nothing; `PullImage(REF)` is timed; `ImageStatus(REF)` must then find the image with
//! the id `PullImage` returned. The throughput is the size `ImageStatus` reports (which
//! includes manifests and config) over the p50 time. Target (DESIGN.md): ≥ 1.5×
//! containerd's throughput, side by side.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::report::{self, FigureReport, Row};
use super::{Figure, Runs, Runtime, Sample, cri, measured, request, targets};

/// Deadline of one PullImage.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// DESIGN.md: pull throughput ≥ 1.5× containerd's.
fn target() -> &'static targets::Target {
    targets::get("pull")
}

pub struct Pull {
    pub image: String,
}

impl Pull {
    fn spec(&self) -> Option<cri::ImageSpec> {
        Some(cri::ImageSpec {
            image: self.image.clone(),
            ..Default::default()
        })
    }

    async fn remove(&self, rt: &mut Runtime) -> Result<()> {
        rt.images
            .remove_image(request(
                cri::RemoveImageRequest { image: self.spec() },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("RemoveImage {}", self.image))?;
        Ok(())
    }

    async fn status(&self, rt: &mut Runtime) -> Result<Option<cri::Image>> {
        Ok(rt
            .images
            .image_status(request(
                cri::ImageStatusRequest {
                    image: self.spec(),
                    verbose: false,
                },
                RPC_TIMEOUT,
            ))
            .await
            .with_context(|| format!("ImageStatus {}", self.image))?
            .into_inner()
            .image)
    }
}

impl Figure for Pull {
    type State = ();

    fn name(&self) -> &'static str {
        "pull"
    }

    async fn setup(&self, _rt: &mut Runtime) -> Result<()> {
        Ok(())
    }

    async fn run(&self, rt: &mut Runtime, _: &mut ()) -> Result<Sample> {
        // cold store
        self.remove(rt).await?;
        if let Some(img) = self.status(rt).await? {
            bail!(
                "RemoveImage {} succeeded but ImageStatus still finds image {}: the store is \
                 not cold, so the pull would not measure a download",
                self.image,
                img.id
            );
        }

        let req = request(
            cri::PullImageRequest {
                image: self.spec(),
                auth: None,
                sandbox_config: None,
            },
            PULL_TIMEOUT,
        );
        let t0 = Instant::now();
        let resp = rt.images.pull_image(req).await;
        let elapsed = t0.elapsed();
        let image_ref = resp
            .with_context(|| format!("PullImage {}", self.image))?
            .into_inner()
            .image_ref;

        // the image really is there, and is the one the pull returned
        let Some(img) = self.status(rt).await? else {
            bail!(
                "PullImage {} returned {image_ref:?} but ImageStatus then finds no image",
                self.image
            );
        };
        if img.id != image_ref {
            bail!(
                "PullImage {} returned image_ref {image_ref:?} but ImageStatus reports id {:?}",
                self.image,
                img.id
            );
        }
        if img.size == 0 {
            bail!(
                "ImageStatus {} reports size 0 for {}: no throughput can be computed",
                self.image,
                img.id
            );
        }
        Ok(Sample {
            ms: elapsed.as_secs_f64() * 1e3,
            bytes: Some(img.size),
            detail: json!({
                "image_ref": image_ref,
                "repo_tags": img.repo_tags,
                "repo_digests": img.repo_digests,
            }),
        })
    }

    async fn teardown(&self, rt: &mut Runtime, _: ()) -> Result<()> {
        // leave no 25 MB image behind
        self.remove(rt).await
    }

    fn report(&self, rts: &[Runtime], runs: &Runs) -> Result<FigureReport> {
        let mut rows = Vec::new();
        let mut per_rt = Vec::new();
        let mut rates = Vec::new();
        let mut sizes = Vec::new();
        for (rt, runs) in rts.iter().zip(runs) {
            let summary = report::summarize(runs)?;
            // every run pulled the same image: one size
            let mut size = None;
            for r in measured(runs) {
                let b = r.sample.bytes.context("pull sample without a size")?;
                match size {
                    None => size = Some(b),
                    Some(s) if s != b => bail!(
                        "{}: ImageStatus {} reported {s} bytes in one run and {b} in another: \
                         the image changed during the benchmark",
                        rt.label,
                        self.image
                    ),
                    _ => {}
                }
            }
            let size = size.context("no measured runs")?;
            let rate = size as f64 / 1e6 / (summary.p50 / 1e3);
            rates.push(rate);
            sizes.push(size);
            rows.push(Row {
                figure: "pull (cold)".into(),
                runtime: rt.label.clone(),
                unit: "ms".into(),
                summary,
                rate: Some(rate),
                target: String::new(),
            });
            per_rt.push(report::runtime_json(
                rt,
                &summary,
                runs,
                json!({ "image_bytes": size, "mb_per_s_at_p50": rate }),
            ));
        }
        let mut notes = Vec::new();
        let ratio = if rts.len() == 2 {
            let ratio = rates[0] / rates[1];
            rows[0].target = target().design.into();
            rows[1].target = report::ratio_text(rts, ratio, target().min_ratio.unwrap_or(1.0));
            if sizes[0] != sizes[1] {
                notes.push(format!(
                    "The two runtimes report different sizes for {} ({} vs {} bytes); \
                     the MB/s ratio uses each one's own size.",
                    self.image, sizes[0], sizes[1]
                ));
            }
            Some(ratio)
        } else {
            rows[0].target = format!("{} (needs --vs)", target().design);
            None
        };
        notes.push(format!(
            "pull (cold): RemoveImage, then PullImage of {} timed, then ImageStatus checked \
             (id = PullImage's image_ref); one runtime connection reused.",
            self.image
        ));
        Ok(FigureReport {
            rows,
            notes,
            json: json!({
                "name": "pull",
                "what": "RemoveImage (cold store), then PullImage timed, then ImageStatus verified",
                "image": self.image,
                "unit": "ms",
                "target": target().design,
                "target_ratio": target().min_ratio,
                "ratio_endpoint_over_vs_mb_per_s": ratio,
                "per_runtime": per_rt,
            }),
        })
    }
}
