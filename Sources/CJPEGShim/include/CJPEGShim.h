#ifndef PIVOT_CJPEG_SHIM_H
#define PIVOT_CJPEG_SHIM_H

#include <stddef.h>
#include <stdint.h>

// libjpeg reports errors by calling exit() unless the error manager jumps away;
// Swift cannot longjmp, so these wrappers do it in C and return a code plus a message.

enum {
  PIVOT_JPEG_OK = 0,
  PIVOT_JPEG_ERROR = 1,          // libjpeg rejected the data (message says why)
  PIVOT_JPEG_BAD_ARGUMENT = 2,   // buffer too small or unsupported parameters
};

typedef struct {
  int width;
  int height;
  int components;    // 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK
  int color_space;   // libjpeg's J_COLOR_SPACE of the file
} pivot_jpeg_header_info;

// Reads only the header: dimensions and colour space.
int pivot_jpeg_read_header(const uint8_t *data, size_t size, pivot_jpeg_header_info *info,
                           char *message, size_t message_size);

// Decodes to interleaved 8-bit RGB at 1/scale_denom of the full size (1, 2, 4 or 8, through
// libjpeg's DCT scaling). Grayscale is replicated; CMYK/YCCK is converted as Pillow does
// (Adobe files are stored inverted). Corrupt-data warnings are treated as errors.
int pivot_jpeg_decode_rgb(const uint8_t *data, size_t size, int scale_denom, uint8_t *out,
                          size_t out_capacity, int *out_width, int *out_height, char *message,
                          size_t message_size);

// Encodes interleaved 8-bit RGB (components 3) or gray (components 1). *out is malloc'ed;
// release it with pivot_jpeg_free.
int pivot_jpeg_encode(const uint8_t *pixels, int width, int height, int components, int quality,
                      uint8_t **out, size_t *out_size, char *message, size_t message_size);

void pivot_jpeg_free(void *pointer);

#endif
