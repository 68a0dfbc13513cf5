//! The protobuf codec of the generated service and client: prost's, except that a request that
//! cannot be decoded (bad wire format, invalid UTF-8 in a string) is the caller's fault and answers
//! `INVALID_ARGUMENT`, not prost's `INTERNAL`, with a fixed message that echoes none of it.
//! `WatchEnrollment` gets small buffers (see [`WATCH_ENCODE_BUFFER`], [`WATCH_DECODE_BUFFER`]).

use crate::proto::v1::{WatchEnrollmentRequest, WatchEnrollmentResponse};
use std::any::TypeId;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The message of a request that is not valid protobuf for its type.
pub const MALFORMED: &str = "malformed request: not a valid protobuf message of the expected type";

/// The first encode buffer of a `WatchEnrollment` stream, in bytes. tonic allocates one buffer
/// per response stream and keeps it (the unsent part of it) for the stream's life, so its 8 KiB
/// default would be most of what an idle watch costs; a watch sends one message at a time, a
/// record (one or two hundred bytes, more once enrolled) or a heartbeat (about 20), and the
/// buffer grows when one is larger.
pub const WATCH_ENCODE_BUFFER: usize = 256;

/// The decode buffer of a `WatchEnrollment` request, in bytes: tonic's 8 KiB default is held by
/// every call until its request is read, so a burst of watches being opened would hold 8 KiB
/// each for a request of about 10 bytes (the buffer grows if one is larger).
pub const WATCH_DECODE_BUFFER: usize = 64;

/// tonic's default: a stream's encoded messages are handed on once this many bytes are ready.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`StrictDecoder`], and the small buffers of watches.
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        if TypeId::of::<T>() == TypeId::of::<WatchEnrollmentResponse>() {
            ProstEncoder::new(BufferSettings::new(WATCH_ENCODE_BUFFER, YIELD_THRESHOLD))
        } else {
            ProstCodec::<T, U>::default().encoder()
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        if TypeId::of::<U>() == TypeId::of::<WatchEnrollmentRequest>() {
            StrictDecoder(ProstDecoder::new(BufferSettings::new(
                WATCH_DECODE_BUFFER,
                YIELD_THRESHOLD,
            )))
        } else {
            StrictDecoder(ProstDecoder::default())
        }
    }
}

/// prost's decoder with decode failures mapped to `INVALID_ARGUMENT`.
pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0
            .decode(buf)
            .map_err(|_| super::status::malformed(MALFORMED))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
