//! QR codes: rendering text or bytes as SVG for the UI, and reading one back from a
//! picture (a file) or from a camera's frames.

use image::ImageReader;
use qrcode::{render::svg, EcLevel, QrCode};

use crate::{CoreError, Result};

/// Most bytes one QR code holds at the error correction used here (version 40, level
/// L, byte mode): invites are kept within it.
pub(crate) const MAX_QR_BYTES: usize = 2953;

/// Largest picture accepted for QR decoding, in bytes and in pixels per side.
const MAX_IMAGE_BYTES: usize = 16 * 1024 * 1024;
const MAX_IMAGE_SIDE: u32 = 8192;

/// Renders `data` as a QR code in SVG. Low error correction: an invite carries a
/// 1.5 KiB Kyber key and must fit one code; screens do not smudge.
pub fn qr_svg(data: &[u8]) -> Result<String> {
    let code = QrCode::with_error_correction_level(data, EcLevel::L).map_err(|e| CoreError::QrCode(e.to_string()))?;
    Ok(code.render::<svg::Color<'_>>().min_dimensions(560, 560).build())
}

/// Finds a QR code in a picture (PNG, JPEG) and returns its text.
pub fn read_qr_image(bytes: &[u8]) -> Result<String> {
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(CoreError::QrCode(format!(
            "the picture is over {} MiB",
            MAX_IMAGE_BYTES >> 20
        )));
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| CoreError::QrCode(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    let picture = reader
        .decode()
        .map_err(|e| CoreError::QrCode(format!("not a picture we can read: {e}")))?;
    find_code(picture.to_luma8())?.ok_or_else(|| CoreError::QrCode("no QR code found in the picture".into()))
}

/// Largest camera frame accepted, in pixels.
const MAX_FRAME_PIXELS: usize = 1920 * 1080;

/// Looks for a QR code in one camera frame (`luma`: one grey byte per pixel, row by
/// row, `width` to a row); `None` if there is none in this frame.
pub fn read_qr_frame(width: u32, height: u32, luma: Vec<u8>) -> Result<Option<String>> {
    let pixels = (width as usize).saturating_mul(height as usize);
    if pixels == 0 || pixels > MAX_FRAME_PIXELS || luma.len() != pixels {
        return Err(CoreError::QrCode(format!(
            "a camera frame of {width}×{height} with {} bytes",
            luma.len()
        )));
    }
    let frame = image::GrayImage::from_raw(width, height, luma)
        .ok_or_else(|| CoreError::QrCode("a camera frame that does not fit its size".into()))?;
    find_code(frame)
}

/// The text of the first QR code in `picture`, if it has one.
fn find_code(picture: image::GrayImage) -> Result<Option<String>> {
    let mut prepared = rqrr::PreparedImage::prepare(picture);
    let grids = prepared.detect_grids();
    let Some(grid) = grids.first() else {
        return Ok(None);
    };
    let (_, text) = grid
        .decode()
        .map_err(|e| CoreError::QrCode(format!("the QR code does not read: {e}")))?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_code_reads_back_from_a_png() {
        let text = format!("cairn://invite/{}", "A".repeat(2400));
        let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L).unwrap();
        let pixels = code.render::<image::Luma<u8>>().module_dimensions(3, 3).build();
        let mut png = Vec::new();
        pixels
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(read_qr_image(&png).unwrap(), text);
    }

    #[test]
    fn a_link_offer_on_a_camera_frame_reads_back_and_an_empty_frame_reads_nothing() {
        let link = format!("cairn://link/{}", "B".repeat(150));
        let code = QrCode::with_error_correction_level(link.as_bytes(), EcLevel::L).unwrap();
        let rendered = code.render::<image::Luma<u8>>().module_dimensions(4, 4).build();
        // The code somewhere on a grey 640×480 frame, as a camera would see a screen.
        let mut frame = image::GrayImage::from_pixel(640, 480, image::Luma([128]));
        image::imageops::overlay(&mut frame, &rendered, 150, 60);
        let (w, h) = frame.dimensions();
        assert_eq!(
            read_qr_frame(w, h, frame.into_raw()).unwrap().as_deref(),
            Some(link.as_str())
        );
        assert_eq!(read_qr_frame(64, 48, vec![200; 64 * 48]).unwrap(), None);
        assert!(matches!(read_qr_frame(64, 48, vec![0; 10]), Err(CoreError::QrCode(_))));
        assert!(matches!(
            read_qr_frame(100_000, 100_000, Vec::new()),
            Err(CoreError::QrCode(_))
        ));
    }

    #[test]
    fn garbage_and_pictures_without_a_code_are_typed_errors() {
        assert!(matches!(read_qr_image(b"not a picture"), Err(CoreError::QrCode(_))));
        let blank = image::GrayImage::from_pixel(64, 64, image::Luma([255]));
        let mut png = Vec::new();
        blank
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(matches!(read_qr_image(&png), Err(CoreError::QrCode(m)) if m.contains("no QR code")));
    }
}
