//! The frames of exec streams: SPDY/3.1 frames with zlib header blocks (raw, and built from
//! header lists compressed with the SPDY dictionary, cut anywhere), the resize channel's JSON
//! stream, and WebSocket client messages.
//!
//! Properties: nothing panics and no header block inflates past the frame limit; a header
//! block the relay reads back is the one that was compressed, whatever the cuts; the resize
//! decoder gives the same sizes however its input is cut.
#![no_main]
use arbitrary::Arbitrary;
use flate2::{Compress, Compression, FlushCompress};
use libfuzzer_sys::fuzz_target;
use portcullis_sidecar::kube::stream::fuzzing::{
    classify, resize_sizes, spdy_frames, SpdyFrame, HEADER_DICTIONARY,
};

#[derive(Arbitrary, Debug)]
enum Input {
    Raw {
        chunks: Vec<Vec<u8>>,
    },
    Headers {
        blocks: Vec<Vec<(String, Vec<String>)>>,
        cuts: Vec<u16>,
    },
    Resize {
        data: Vec<u8>,
        cut: u16,
    },
    WebSocket {
        data: Vec<u8>,
        v5: bool,
    },
}

fn header_block(headers: &[(String, Vec<String>)]) -> Vec<u8> {
    let mut b = (headers.len() as u32).to_be_bytes().to_vec();
    for (name, values) in headers {
        b.extend_from_slice(&(name.len() as u32).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        let value = values.join("\0");
        b.extend_from_slice(&(value.len() as u32).to_be_bytes());
        b.extend_from_slice(value.as_bytes());
    }
    b
}

fuzz_target!(|input: Input| match input {
    Input::Raw { chunks } => {
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let _ = spdy_frames(&chunks);
    }
    Input::Headers { blocks, cuts } => {
        // Names as the relay accepts them: lowercase, each once, values without NUL.
        let blocks: Vec<Vec<(String, Vec<String>)>> = blocks
            .into_iter()
            .take(8)
            .map(|b| {
                let mut seen = Vec::new();
                b.into_iter()
                    .filter(|(n, _)| {
                        *n == n.to_lowercase() && !seen.contains(n) && {
                            seen.push(n.clone());
                            true
                        }
                    })
                    .map(|(n, v)| {
                        let v: Vec<String> = v.into_iter().filter(|s| !s.contains('\0')).collect();
                        (n, if v.is_empty() { vec![String::new()] } else { v })
                    })
                    .collect()
            })
            .collect();
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&HEADER_DICTIONARY).expect("dictionary");
        let mut stream = Vec::new();
        for (i, headers) in blocks.iter().enumerate() {
            let plain = header_block(headers);
            let mut packed = Vec::with_capacity(plain.len() + 1024);
            z.compress_vec(&plain, &mut packed, FlushCompress::Sync)
                .expect("compress");
            while packed.capacity() == packed.len() {
                packed.reserve(1024);
                z.compress_vec(&[], &mut packed, FlushCompress::Sync)
                    .expect("compress");
            }
            // SYN_STREAM v3: control bit and version, type 1, flags, length, stream id,
            // associated stream id, priority and slot, header block.
            let mut frame = vec![0x80, 3, 0, 1, 0];
            let len = 10 + packed.len() as u32;
            frame.extend_from_slice(&len.to_be_bytes()[1..]);
            frame.extend_from_slice(&(2 * i as u32 + 1).to_be_bytes());
            frame.extend_from_slice(&0u32.to_be_bytes());
            frame.extend_from_slice(&[0, 0]);
            frame.extend_from_slice(&packed);
            stream.extend_from_slice(&frame);
        }
        let mut chunks = Vec::new();
        let mut at = 0;
        for c in cuts {
            let end = (at + usize::from(c)).min(stream.len());
            chunks.push(&stream[at..end]);
            at = end;
        }
        chunks.push(&stream[at..]);
        let frames = spdy_frames(&chunks).expect("a well-formed stream is read");
        assert_eq!(frames.len(), blocks.len());
        for (frame, headers) in frames.iter().zip(&blocks) {
            match frame {
                SpdyFrame::Control {
                    headers: Some(read),
                    ..
                } => assert_eq!(read, headers),
                other => panic!("SYN_STREAM read as {other:?}"),
            }
        }
    }
    Input::Resize { data, cut } => {
        let whole: Vec<_> = resize_sizes(&[&data]);
        let cut = usize::from(cut).min(data.len());
        let split = resize_sizes(&[&data[..cut], &data[cut..]]);
        // Cut or whole, the same sizes are read (as long as no value was refused).
        if let (Ok(a), true) = (&whole[0], split.iter().all(Result::is_ok)) {
            let b: Vec<_> = split.into_iter().flat_map(Result::unwrap).collect();
            assert_eq!(a, &b, "resize sizes depend on where the stream is cut");
        }
    }
    Input::WebSocket { data, v5 } => {
        let _ = classify(&data, v5);
    }
});
