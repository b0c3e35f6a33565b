//! RFC 6455 payload masking (section 5.3), a machine word at a time.
//!
//! Masking is an XOR with a 4-byte key repeated over the payload. Eight bytes
//! hold the key exactly twice, so a `u64` made of the key (rotated to the
//! payload offset where the slice starts) masks any 8-byte chunk; only the last
//! 0-7 bytes go through a byte loop.

/// XOR `buf` with `mask`, where `buf` starts at payload offset 0 (or any
/// multiple of 4). Applying it twice restores the input.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let key = [
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ];
    let word = u64::from_ne_bytes(key);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // The tail starts at a multiple of 8 from the start, so the key phase is 0.
    for (byte, m) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= m;
    }
}

/// XOR `buf` with `mask`, where `buf` starts at payload offset `offset`
/// (a payload delivered in pieces continues the key where the last piece ended).
#[inline]
pub fn apply_mask_at(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    apply_mask(buf, rotate_mask(mask, offset));
}

/// The key as seen from payload offset `offset`: byte `i` of the result masks
/// payload byte `offset + i`.
#[inline]
pub fn rotate_mask(mask: [u8; 4], offset: usize) -> [u8; 4] {
    let mut m = mask;
    m.rotate_left(offset & 3);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= mask[(offset + i) % 4];
        }
    }

    #[test]
    fn rfc_example_hello() {
        let mut p = *b"Hello";
        apply_mask(&mut p, [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(p, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    proptest! {
        #[test]
        fn matches_byte_loop(data in proptest::collection::vec(any::<u8>(), 0..100),
                             mask in any::<[u8; 4]>(), offset in 0usize..16, start in 0usize..8) {
            let start = start.min(data.len());
            let mut fast = data.clone();
            let mut slow = data.clone();
            apply_mask_at(&mut fast[start..], mask, offset);
            naive(&mut slow[start..], mask, offset);
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn split_masking_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..64),
                                      mask in any::<[u8; 4]>(), cut in 0usize..64) {
            let cut = cut.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, mask);
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(cut);
            apply_mask_at(a, mask, 0);
            apply_mask_at(b, mask, cut);
            prop_assert_eq!(whole, parts);
        }
    }
}
