//! Minimal `.npy` (format 1.0) writer/reader for little-endian f32 C-order arrays.

use std::io::{self, Read, Write};

fn header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // magic (6) + version (2) + header len (2) + dict + '\n', padded to a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes `data` (C order, `shape`) as a little-endian f32 `.npy`.
pub fn write_f32<W: Write>(w: W, shape: &[usize], data: &[f32]) -> io::Result<()> {
    let mut npy = NpyWriter::new(w, shape)?;
    npy.write(data)?;
    npy.finish()
}

/// A little-endian f32 `.npy` written in pieces: the header first, then the values in C order,
/// in as many [`NpyWriter::write`] calls as convenient; [`NpyWriter::finish`] checks the count.
pub struct NpyWriter<W: Write> {
    w: W,
    expected: usize,
    written: usize,
    buf: Vec<u8>,
}

impl<W: Write> NpyWriter<W> {
    pub fn new(mut w: W, shape: &[usize]) -> io::Result<Self> {
        w.write_all(&header(shape))?;
        Ok(Self { w, expected: shape.iter().product(), written: 0, buf: Vec::new() })
    }

    pub fn write(&mut self, values: &[f32]) -> io::Result<()> {
        if self.written + values.len() > self.expected {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("more than the {} values of the shape", self.expected)));
        }
        self.written += values.len();
        if cfg!(target_endian = "little") {
            return self.w.write_all(bytemuck::cast_slice(values));
        }
        const CHUNK: usize = 1 << 16;
        for part in values.chunks(CHUNK) {
            self.buf.clear();
            self.buf.extend(part.iter().flat_map(|v| v.to_le_bytes()));
            self.w.write_all(&self.buf)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<()> {
        if self.written != self.expected {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("the shape holds {} values, {} were written", self.expected, self.written)));
        }
        self.w.flush()
    }
}

/// Reads a little-endian f32 C-order `.npy` written by numpy or [`write_f32`].
pub fn read_f32<R: Read>(mut r: R) -> io::Result<(Vec<usize>, Vec<f32>)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad("not an npy file"));
    }
    let hlen = if pre[6] == 1 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b)?;
        u16::from_le_bytes(b) as usize
    } else {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        u32::from_le_bytes(b) as usize
    };
    let mut h = vec![0u8; hlen];
    r.read_exact(&mut h)?;
    let h = String::from_utf8_lossy(&h);
    if !h.contains("'<f4'") || h.contains("'fortran_order': True") {
        return Err(bad("only little-endian f32 C-order arrays are supported"));
    }
    let open = h.find("'shape': (").ok_or_else(|| bad("no shape"))? + 10;
    let close = open + h[open..].find(')').ok_or_else(|| bad("bad shape"))?;
    let shape: Vec<usize> =
        h[open..close].split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().map_err(|_| bad("bad dim"))).collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let mut raw = vec![0u8; n * 4];
    r.read_exact(&mut raw)?;
    Ok((shape, raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_alignment() {
        let data: Vec<f32> = (0..24).map(|v| v as f32 * 0.5 - 3.0).collect();
        let mut buf = Vec::new();
        super::write_f32(&mut buf, &[2, 3, 4], &data).unwrap();
        assert_eq!((buf.len() - 24 * 4) % 64, 0, "header is padded to 64 bytes");
        let (shape, back) = super::read_f32(&buf[..]).unwrap();
        assert_eq!(shape, vec![2, 3, 4]);
        assert_eq!(back, data);
    }

    #[test]
    fn rejects_wrong_length() {
        assert!(super::write_f32(Vec::new(), &[2, 2], &[1.0]).is_err());
        assert!(super::write_f32(Vec::new(), &[2, 2], &[1.0; 5]).is_err());
    }

    #[test]
    fn pieces_write_the_same_file_as_one_call() {
        let data: Vec<f32> = (0..60).map(|v| v as f32 * -0.25 + 1e-3).collect();
        let mut whole = Vec::new();
        super::write_f32(&mut whole, &[3, 4, 5], &data).unwrap();
        let mut pieces = Vec::new();
        let mut w = super::NpyWriter::new(&mut pieces, &[3, 4, 5]).unwrap();
        for part in data.chunks(7) {
            w.write(part).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(pieces, whole);
        // little-endian on the wire
        let first = whole.len() - 60 * 4;
        assert_eq!(&whole[first..first + 4], &data[0].to_le_bytes());
    }
}
