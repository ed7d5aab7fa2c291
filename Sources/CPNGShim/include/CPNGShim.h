#ifndef PIVOT_CPNG_SHIM_H
#define PIVOT_CPNG_SHIM_H

#include <stddef.h>
#include <stdint.h>

// libpng reports errors by longjmp-ing out of the decoder (or abort() without a jump buffer);
// Swift cannot setjmp, so these wrappers do it in C and return a code plus a message.

enum {
  PIVOT_PNG_OK = 0,
  PIVOT_PNG_ERROR = 1,          // libpng rejected the data (message says why)
  PIVOT_PNG_BAD_ARGUMENT = 2,   // buffer too small or unsupported parameters
};

typedef struct {
  int width;        // libpng refuses more than 1,000,000 per side (PNG_USER_WIDTH_MAX)
  int height;
  int bit_depth;    // 1, 2, 4, 8 or 16 bits per sample
  int color_type;   // PNG_COLOR_TYPE_*: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA
  int interlaced;   // 1 for Adam7
  int has_alpha;    // an alpha channel, or a tRNS chunk (palette or colour-key transparency)
} pivot_png_header_info;

// Reads the chunks before the image data: dimensions and kind. Allocates nothing
// proportional to the image.
int pivot_png_read_header(const uint8_t *data, size_t size, pivot_png_header_info *info,
                          char *message, size_t message_size);

// Decodes every PNG kind to interleaved 8-bit RGB (channels 3) or RGBA (channels 4) with
// libpng's transforms: palettes and low-bit grey expanded, tRNS turned into alpha, 16-bit
// samples cut to their high byte, grey replicated, Adam7 de-interlaced. No gamma is applied
// (as Pillow). Channels 4 on an opaque image adds alpha 255; channels 3 drops alpha.
int pivot_png_decode(const uint8_t *data, size_t size, int channels, uint8_t *out,
                     size_t out_capacity, int *out_width, int *out_height, char *message,
                     size_t message_size);

#endif
