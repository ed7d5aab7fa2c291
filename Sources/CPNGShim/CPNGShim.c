#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <png.h>
#include "CPNGShim.h"

typedef struct {
  const uint8_t *data;
  size_t size;
  size_t offset;
  char *message;
  size_t message_size;
} pivot_png_source;

static void pivot_png_error(png_structp png, png_const_charp text) {
  pivot_png_source *source = (pivot_png_source *)png_get_error_ptr(png);
  if (source->message && source->message_size > 0)
    snprintf(source->message, source->message_size, "%s", text ? text : "libpng error");
  png_longjmp(png, 1);
}

// Warnings are ancillary problems (a bad iCCP profile, a damaged text chunk) that leave the
// pixels intact; corrupt image data is an error in libpng, so nothing is lost by ignoring them.
static void pivot_png_warning(png_structp png, png_const_charp text) {
  (void)png;
  (void)text;
}

static void pivot_png_read(png_structp png, png_bytep target, size_t count) {
  pivot_png_source *source = (pivot_png_source *)png_get_io_ptr(png);
  if (count > source->size - source->offset) png_error(png, "truncated (the data ends inside a chunk)");
  memcpy(target, source->data + source->offset, count);
  source->offset += count;
}

static int pivot_png_start(pivot_png_source *source, const uint8_t *data, size_t size, char *message,
                           size_t message_size) {
  source->data = data;
  source->size = size;
  source->offset = 0;
  source->message = message;
  source->message_size = message_size;
  if (message && message_size > 0) message[0] = 0;
  if (size < 8 || png_sig_cmp((png_const_bytep)data, 0, 8) != 0) {
    if (message && message_size > 0) snprintf(message, message_size, "not a PNG (bad signature)");
    return 0;
  }
  return 1;
}

static void pivot_png_fill_header(png_structp png, png_infop info, pivot_png_header_info *header) {
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0, interlace = 0;
  png_get_IHDR(png, info, &width, &height, &bit_depth, &color_type, &interlace, NULL, NULL);
  header->width = (int)width;
  header->height = (int)height;
  header->bit_depth = bit_depth;
  header->color_type = color_type;
  header->interlaced = interlace == PNG_INTERLACE_ADAM7;
  header->has_alpha = (color_type & PNG_COLOR_MASK_ALPHA) != 0 || png_get_valid(png, info, PNG_INFO_tRNS) != 0;
}

int pivot_png_read_header(const uint8_t *data, size_t size, pivot_png_header_info *header,
                          char *message, size_t message_size) {
  pivot_png_source source;
  if (!pivot_png_start(&source, data, size, message, message_size)) return PIVOT_PNG_ERROR;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &source, pivot_png_error, pivot_png_warning);
  if (!png) {
    if (message && message_size > 0) snprintf(message, message_size, "libpng could not start (out of memory)");
    return PIVOT_PNG_ERROR;
  }
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, info ? &info : NULL, NULL);
    return PIVOT_PNG_ERROR;
  }
  if (!info) png_error(png, "libpng could not start (out of memory)");
  png_set_read_fn(png, &source, pivot_png_read);
  png_read_info(png, info);
  pivot_png_fill_header(png, info, header);
  png_destroy_read_struct(&png, &info, NULL);
  return PIVOT_PNG_OK;
}

int pivot_png_decode(const uint8_t *data, size_t size, int channels, uint8_t *out,
                     size_t out_capacity, int *out_width, int *out_height, char *message,
                     size_t message_size) {
  pivot_png_source source;
  if (channels != 3 && channels != 4) {
    if (message && message_size > 0) snprintf(message, message_size, "channels must be 3 or 4");
    return PIVOT_PNG_BAD_ARGUMENT;
  }
  if (!pivot_png_start(&source, data, size, message, message_size)) return PIVOT_PNG_ERROR;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &source, pivot_png_error, pivot_png_warning);
  if (!png) {
    if (message && message_size > 0) snprintf(message, message_size, "libpng could not start (out of memory)");
    return PIVOT_PNG_ERROR;
  }
  png_infop info = png_create_info_struct(png);
  // Set after setjmp and freed on the error path, so volatile.
  png_bytep *volatile rows = NULL;
  volatile int status = PIVOT_PNG_ERROR;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, info ? &info : NULL, NULL);
    free(rows);
    return status;
  }
  if (!info) png_error(png, "libpng could not start (out of memory)");
  png_set_read_fn(png, &source, pivot_png_read);
  png_read_info(png, info);
  pivot_png_header_info header;
  pivot_png_fill_header(png, info, &header);

  png_set_expand(png);     // palette → RGB, 1/2/4-bit grey → 8-bit, tRNS → alpha
  png_set_strip_16(png);   // the high byte, as Pillow keeps of 16-bit RGB, RGBA and LA
  png_set_gray_to_rgb(png);
  if (channels == 4 && !header.has_alpha) png_set_add_alpha(png, 0xFF, PNG_FILLER_AFTER);
  if (channels == 3 && header.has_alpha) png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);

  size_t width = (size_t)header.width, height = (size_t)header.height;
  if (png_get_channels(png, info) != channels || png_get_bit_depth(png, info) != 8 ||
      png_get_rowbytes(png, info) != width * (size_t)channels) {
    status = PIVOT_PNG_BAD_ARGUMENT;
    png_error(png, "libpng's transforms did not give 8-bit samples of the requested channels");
  }
  if (width * height * (size_t)channels > out_capacity) {
    status = PIVOT_PNG_BAD_ARGUMENT;
    png_error(png, "output buffer too small");
  }
  rows = (png_bytep *)malloc(height * sizeof(png_bytep));
  if (!rows) png_error(png, "out of memory for row pointers");
  for (size_t y = 0; y < height; y++) rows[y] = out + y * width * (size_t)channels;
  png_read_image(png, rows);

  *out_width = (int)width;
  *out_height = (int)height;
  png_destroy_read_struct(&png, &info, NULL);
  free(rows);
  return PIVOT_PNG_OK;
}
