#include "CJPEGShim.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

typedef struct {
  struct jpeg_error_mgr base;
  jmp_buf escape;
  char *message;
  size_t message_size;
} pivot_error_manager;

static void pivot_error_exit(j_common_ptr cinfo) {
  pivot_error_manager *manager = (pivot_error_manager *)cinfo->err;
  if (manager->message && manager->message_size > 0) {
    char buffer[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, buffer);
    snprintf(manager->message, manager->message_size, "%s", buffer);
  }
  longjmp(manager->escape, 1);
}

// Warnings (msg_level < 0) mean corrupt or truncated data; libjpeg would fill the rest with
// grey and carry on. A training sample like that is worse than a skipped one, so fail.
static void pivot_emit_message(j_common_ptr cinfo, int msg_level) {
  if (msg_level < 0) pivot_error_exit(cinfo);
}

static void pivot_install_errors(pivot_error_manager *manager, char *message, size_t message_size) {
  jpeg_std_error(&manager->base);
  manager->base.error_exit = pivot_error_exit;
  manager->base.emit_message = pivot_emit_message;
  manager->message = message;
  manager->message_size = message_size;
  if (message && message_size > 0) message[0] = 0;
}

int pivot_jpeg_read_header(const uint8_t *data, size_t size, pivot_jpeg_header_info *info,
                           char *message, size_t message_size) {
  struct jpeg_decompress_struct cinfo;
  pivot_error_manager manager;
  cinfo.err = &manager.base;
  pivot_install_errors(&manager, message, message_size);
  if (setjmp(manager.escape)) {
    jpeg_destroy_decompress(&cinfo);
    return PIVOT_JPEG_ERROR;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, (const unsigned char *)data, (unsigned long)size);
  jpeg_read_header(&cinfo, TRUE);
  info->width = (int)cinfo.image_width;
  info->height = (int)cinfo.image_height;
  info->components = cinfo.num_components;
  info->color_space = (int)cinfo.jpeg_color_space;
  jpeg_destroy_decompress(&cinfo);
  return PIVOT_JPEG_OK;
}

static inline uint8_t muldiv255(int a, int b) {
  int tmp = a * b + 128;
  return (uint8_t)(((tmp >> 8) + tmp) >> 8);
}

int pivot_jpeg_decode_rgb(const uint8_t *data, size_t size, int scale_denom, uint8_t *out,
                          size_t out_capacity, int *out_width, int *out_height, char *message,
                          size_t message_size) {
  struct jpeg_decompress_struct cinfo;
  pivot_error_manager manager;
  JSAMPLE *volatile row = NULL;
  cinfo.err = &manager.base;
  pivot_install_errors(&manager, message, message_size);
  if (setjmp(manager.escape)) {
    jpeg_destroy_decompress(&cinfo);
    free(row);
    return PIVOT_JPEG_ERROR;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, (const unsigned char *)data, (unsigned long)size);
  jpeg_read_header(&cinfo, TRUE);

  int cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  cinfo.scale_num = 1;
  cinfo.scale_denom = (unsigned int)(scale_denom > 0 ? scale_denom : 1);
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&cinfo);

  size_t width = cinfo.output_width, height = cinfo.output_height;
  if (width * height * 3 > out_capacity || cinfo.output_components != (cmyk ? 4 : 3)) {
    if (message && message_size > 0)
      snprintf(message, message_size, "output buffer too small for %zux%zu", width, height);
    jpeg_destroy_decompress(&cinfo);
    return PIVOT_JPEG_BAD_ARGUMENT;
  }
  *out_width = (int)width;
  *out_height = (int)height;
  if (cmyk) {
    row = (JSAMPLE *)malloc(width * 4);
    // Pillow reads Adobe CMYK as inverted ("CMYK;I") and converts with
    // r = (255 - k) - (255 - k) * c / 255, using the same rounding.
    int inverted = cinfo.saw_Adobe_marker;
    while (cinfo.output_scanline < cinfo.output_height) {
      uint8_t *target = out + (size_t)cinfo.output_scanline * width * 3;
      JSAMPROW rows[1] = {row};
      jpeg_read_scanlines(&cinfo, rows, 1);
      for (size_t x = 0; x < width; x++) {
        int c = row[4 * x], m = row[4 * x + 1], y = row[4 * x + 2], k = row[4 * x + 3];
        if (inverted) { c = 255 - c; m = 255 - m; y = 255 - y; k = 255 - k; }
        int nk = 255 - k;
        target[3 * x] = (uint8_t)(nk - muldiv255(c, nk));
        target[3 * x + 1] = (uint8_t)(nk - muldiv255(m, nk));
        target[3 * x + 2] = (uint8_t)(nk - muldiv255(y, nk));
      }
    }
    free(row);
    row = NULL;
  } else {
    while (cinfo.output_scanline < cinfo.output_height) {
      JSAMPROW rows[1] = {out + (size_t)cinfo.output_scanline * width * 3};
      jpeg_read_scanlines(&cinfo, rows, 1);
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return PIVOT_JPEG_OK;
}

int pivot_jpeg_encode(const uint8_t *pixels, int width, int height, int components, int quality,
                      uint8_t **out, size_t *out_size, char *message, size_t message_size) {
  struct jpeg_compress_struct cinfo;
  pivot_error_manager manager;
  unsigned char *buffer = NULL;
  unsigned long buffer_size = 0;
  if (components != 1 && components != 3) {
    if (message && message_size > 0) snprintf(message, message_size, "components must be 1 or 3");
    return PIVOT_JPEG_BAD_ARGUMENT;
  }
  cinfo.err = &manager.base;
  pivot_install_errors(&manager, message, message_size);
  if (setjmp(manager.escape)) {
    jpeg_destroy_compress(&cinfo);
    free(buffer);
    return PIVOT_JPEG_ERROR;
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &buffer, &buffer_size);
  cinfo.image_width = (JDIMENSION)width;
  cinfo.image_height = (JDIMENSION)height;
  cinfo.input_components = components;
  cinfo.in_color_space = components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW rows[1] = {(JSAMPROW)(pixels + (size_t)cinfo.next_scanline * width * components)};
    jpeg_write_scanlines(&cinfo, rows, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  *out = buffer;
  *out_size = buffer_size;
  return PIVOT_JPEG_OK;
}

void pivot_jpeg_free(void *pointer) { free(pointer); }
