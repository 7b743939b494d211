//! Timings of the recipes on a realistic 512 x 512 x 300 volume (not a test of speed: ignored,
//! prints only). `cargo test --release -p ct-volume --test recipe_timing -- --ignored --nocapture`

use ct_volume::{DiffusionParams, FvlmParams, Geometry, MednextParams, Volume, Voxels, ctclip_tensor, diffusion_slices, fvlm_inputs, mednext_tensor, to_f16_bits};
use ndarray::Array3;
use std::time::Instant;

/// Process CPU time (user + system) in ms from `/proc/self/stat` (0 where unavailable): the
/// machine may be shared, so wall time alone says little.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks * 10.0 // USER_HZ = 100
}

struct Clock(Instant, f64);

impl Clock {
    fn start() -> Self {
        Self(Instant::now(), cpu_ms())
    }

    fn report(&self, what: &str) {
        println!("{what}: wall {:.0} ms, cpu {:.0} ms", self.0.elapsed().as_secs_f64() * 1e3, cpu_ms() - self.1);
    }
}

#[test]
#[ignore = "timing report, run in release with --nocapture"]
fn recipe_timings_512x512x300() {
    let (nk, nj, ni) = (300, 512, 512);
    let hash = |k: usize, j: usize, i: usize| ((k * 73_856_093) ^ (j * 19_349_663) ^ (i * 83_492_791)) % 61;
    let data = Array3::from_shape_fn((nk, nj, ni), |(k, j, i)| {
        let (y, x) = ((j as f64 - 256.0) / 230.0, (i as f64 - 256.0) / 240.0);
        let noise = hash(k, j, i) as i16 - 30;
        if y * y + x * x > 1.0 {
            -1000 - noise.abs()
        } else if ((x.abs() - 0.45) / 0.3).powi(2) + (y / 0.6).powi(2) < 1.0 {
            -850 + noise
        } else {
            40 + noise
        }
    });
    let mask = Array3::from_shape_fn((nk, nj, ni), |(k, j, i)| {
        let (y, x) = ((j as f64 - 256.0) / 230.0, (i as f64 - 256.0) / 240.0);
        if !(30..270).contains(&k) {
            0u8
        } else if ((x.abs() - 0.45) / 0.3).powi(2) + (y / 0.6).powi(2) < 1.0 {
            1
        } else if (x / 0.2).powi(2) + ((y - 0.1) / 0.25).powi(2) < 1.0 && (90..200).contains(&k) {
            2
        } else if (x / 0.05).powi(2) + ((y + 0.3) / 0.05).powi(2) < 1.0 {
            4
        } else {
            0
        }
    });
    let geometry = Geometry {
        spacing_mm: [0.7, 0.7, 1.0],
        orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        origin_mm: [0.0; 3],
        slice_positions_mm: (0..nk).map(|k| [0.0, 0.0, k as f64]).collect(),
    };
    let vol = Volume::new(Voxels::I16(data), geometry).unwrap();
    println!("threads: {}", rayon::current_num_threads());

    let t = Clock::start();
    let ct = ctclip_tensor(&vol).unwrap();
    t.report("ctclip tensor (input of diffusion)");

    let p = DiffusionParams::default();
    let t = Clock::start();
    let mut n = 0;
    for r in p.batches(16) {
        n += diffusion_slices(&ct, r, p.size).unwrap().len();
    }
    t.report(&format!("diffusion: 216 slices in 14 batches ({n} values)"));
    drop(ct);

    let t = Clock::start();
    let m = mednext_tensor(&vol, &MednextParams::default()).unwrap();
    t.report("mednext: [1,1,320,320,224] f32");
    let t = Clock::start();
    let h = to_f16_bits(&m);
    t.report(&format!("mednext: f16 conversion ({} values)", h.len()));

    let t = Clock::start();
    let organs = fvlm_inputs(&vol, mask.view(), &FvlmParams::default()).unwrap();
    t.report(&format!("fvlm: plan + {} organs x 2 x [112,288,352]", organs.len()));
    for o in &organs {
        println!("  organ {} (index {}): present {}", o.mask_id, o.organ_index, o.present);
    }
}
