/* One rectangle of a JPEG, decoded with libjpeg-turbo's jpeg_crop_scanline and jpeg_skip_scanlines: the inverse
 * DCT, upsampling and colour conversion run only for the columns around the crop, rows below it are never read,
 * and rows above it are entropy-decoded only. torchvision, PIL and simplejpeg do not expose these two calls, hence
 * this file; region_decode.py builds it with the system's C compiler, loads it with ctypes, and checks its pixels
 * against torchvision's decoder before using it.
 *
 * The decode starts MARGIN pixels above and to the left and right of the rectangle: libjpeg-turbo's fancy
 * upsampling and the iMCU rows that jpeg_skip_scanlines resumes at make the first rows and columns of a cropped
 * decode differ from the full decode's; with the margin the rectangle is the full decode's, pixel for pixel. */

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

#ifndef LIBJPEG_TURBO_VERSION_NUMBER
#define LIBJPEG_TURBO_VERSION_NUMBER 0
#endif

struct error_state {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  int warned;
};

static void on_error(j_common_ptr cinfo) { longjmp(((struct error_state *)cinfo->err)->jump, 1); }

/* A warning (corrupt data, premature end) fails the call too: the caller decodes the file the usual way, which
 * reports or repairs it exactly as it always did. */
static void on_message(j_common_ptr cinfo, int level) {
  if (level < 0) ((struct error_state *)cinfo->err)->warned = 1;
}

int vgg16_jpeg_version(void) { return LIBJPEG_TURBO_VERSION_NUMBER; }

/* Rows read per jpeg_read_scanlines call: one at a time pays libjpeg-turbo's per-call set-up on every row
 * (docs/performance.md has what it cost); an iMCU row of 4:2:0 is 16 rows. */
#define ROWS_PER_READ 16

int vgg16_jpeg_rows_per_read(void) { return ROWS_PER_READ; } /* how much scratch the caller allocates */

/* RGB rows [top, top + height) and columns [left, left + width) of the image decoded at 1/denom scale, written to
 * out (height * width * 3 bytes); scratch holds scratch_bytes, at least ROWS_PER_READ rows of 3 bytes per pixel
 * of the scaled width. Returns 0 on success, 1 where libjpeg failed or warned, 2 for a rectangle outside the image
 * or scratch too small. */
int vgg16_jpeg_region(const unsigned char *data, unsigned long size, int denom, int top, int left, int height,
                      int width, int margin, unsigned char *scratch, unsigned long scratch_bytes, unsigned char *out) {
  struct jpeg_decompress_struct cinfo;
  struct error_state err;
  int status = 0;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.emit_message = on_message;
  err.warned = 0;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_RGB; /* CMYK and YCCK files fail here and take the usual path */
  cinfo.scale_num = 1;
  cinfo.scale_denom = denom;
  jpeg_start_decompress(&cinfo);
  int full_width = (int)cinfo.output_width, full_height = (int)cinfo.output_height;
  if (top < 0 || left < 0 || height < 1 || width < 1 || top + height > full_height || left + width > full_width ||
      (unsigned long)full_width * 3 * ROWS_PER_READ > scratch_bytes) {
    status = 2;
  } else {
    int x0 = left > margin ? left - margin : 0;
    int x1 = left + width + margin < full_width ? left + width + margin : full_width;
    int y0 = top > margin ? top - margin : 0;
    JDIMENSION x = (JDIMENSION)x0, w = (JDIMENSION)(x1 - x0);
    if (x0 > 0 || x1 < full_width) jpeg_crop_scanline(&cinfo, &x, &w); /* x moves left to an iMCU boundary */
    if (y0 > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0);
    JSAMPROW rows[ROWS_PER_READ];
    for (int i = 0; i < ROWS_PER_READ; i++) rows[i] = scratch + (size_t)i * w * 3;
    int y = y0;
    while (y < top + height) {
      int want = top + height - y < ROWS_PER_READ ? top + height - y : ROWS_PER_READ;
      int got = (int)jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)want);
      if (got == 0) break; /* cannot happen with a memory source; guards the loop */
      for (int i = 0; i < got; i++, y++)
        if (y >= top) memcpy(out + (size_t)(y - top) * width * 3, rows[i] + (size_t)(left - (int)x) * 3,
                             (size_t)width * 3);
    }
    status = err.warned || y < top + height ? 1 : 0;
  }
  jpeg_abort_decompress(&cinfo); /* the rows below the rectangle are never decoded */
  jpeg_destroy_decompress(&cinfo);
  return status;
}
